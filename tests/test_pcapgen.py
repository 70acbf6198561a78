"""tests/pcapgen.py writes captures that tcpdump, an independent parser and Argus all read as intended."""

import importlib.util
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import pcapgen as g

V4C, V4S, V6C, V6S = "10.0.0.1", "198.18.0.1", "2001:db8::1", "2001:db8::2"


# --- an independent reader: struct only, nothing shared with pcapgen ---------------------------------

def ones_complement_ok(data: bytes) -> bool:
    """True if data (checksum field included) sums to 0xffff in ones' complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += int.from_bytes(data[i:i + 2], "big")
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def read_pcap(path):
    """(header fields, [(ts_us, caplen, orig_len, data)]) of a classic µs pcap."""
    raw = path.read_bytes()
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", raw)
    records, off = [], 24
    while off < len(raw):
        sec, usec, caplen, orig = struct.unpack_from("<IIII", raw, off)
        records.append((sec * 1_000_000 + usec, caplen, orig, raw[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    assert off == len(raw)
    return dict(magic=magic, version=(major, minor), snaplen=snaplen, linktype=linktype), records


def parse(frame: bytes) -> dict:
    """Decode one Ethernet frame and check every length and checksum it carries."""
    out = {"vlans": [], "wire": len(frame)}
    ethertype, off = struct.unpack_from("!H", frame, 12)[0], 14
    while ethertype in (0x8100, 0x88A8):
        tci, ethertype = struct.unpack_from("!HH", frame, off)
        out["vlans"].append(tci & 0x0FFF)
        off += 4
    out["ethertype"] = ethertype
    if ethertype == 0x0800:
        ihl = (frame[off] & 0x0F) * 4
        total, ident, frag = struct.unpack_from("!HHH", frame, off + 2)
        assert frame[off] >> 4 == 4 and ihl >= 20
        assert ones_complement_ok(frame[off:off + ihl]), "IPv4 header checksum"
        assert off + total <= len(frame)
        assert len(frame) == max(60, off + total) or len(frame) == off + total, "only NIC padding after IP"
        out.update(proto=frame[off + 9], src=frame[off + 12:off + 16], dst=frame[off + 16:off + 20],
                   ident=ident, mf=bool(frag & 0x2000), df=bool(frag & 0x4000), offset=(frag & 0x1FFF) * 8)
        pseudo = frame[off + 12:off + 20] + struct.pack("!BB", 0, out["proto"])
        l4, l4len = frame[off + ihl:off + total], total - ihl
    elif ethertype == 0x86DD:
        plen, nh = struct.unpack_from("!HB", frame, off + 4)
        assert off + 40 + plen == len(frame) or len(frame) == 60
        out.update(src=frame[off + 8:off + 24], dst=frame[off + 24:off + 40], offset=0, mf=False, exts=[])
        pos, end = off + 40, off + 40 + plen
        while nh in (0, 43, 44, 60):
            out["exts"].append(nh)
            if nh == 44:
                fo = struct.unpack_from("!H", frame, pos + 2)[0]
                out.update(offset=fo & ~7, mf=bool(fo & 1), ident=struct.unpack_from("!I", frame, pos + 4)[0])
                nh, pos = frame[pos], pos + 8
            else:
                nh, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        out["proto"] = nh
        l4, l4len = frame[pos:end], end - pos
        pseudo = frame[off + 8:off + 40] + struct.pack("!I3xB", l4len, nh)
    else:
        return out
    if ethertype == 0x0800:
        pseudo += struct.pack("!H", l4len)
    out["l4"] = l4
    if out["offset"] or out["mf"]:
        return out                                 # a fragment: checked after reassembly
    check_l4(out, pseudo, l4)
    return out


def check_l4(out: dict, pseudo: bytes, l4: bytes) -> None:
    """Check the transport checksum and record ports, flags and payload length."""
    proto = out["proto"]
    if proto == 6:
        assert ones_complement_ok(pseudo + l4), "TCP checksum"
        sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", l4)
        out.update(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, app=len(l4) - (doff >> 4) * 4)
    elif proto == 17:
        sport, dport, length, csum = struct.unpack_from("!HHHH", l4)
        assert length == len(l4) and csum != 0
        assert ones_complement_ok(pseudo + l4), "UDP checksum"
        out.update(sport=sport, dport=dport, app=length - 8)
    elif proto == 1:
        assert ones_complement_ok(l4), "ICMP checksum"
        out.update(icmp_type=l4[0], app=len(l4))
    elif proto == 58:
        assert ones_complement_ok(pseudo + l4), "ICMPv6 checksum"
        out.update(icmp_type=l4[0], app=len(l4))


def truth_from_frames(session: g.Session) -> dict:
    """Recount a session's counters from its parsed frames."""
    t = session.truth
    client = g.ip(t.saddr).packed
    counts = dict.fromkeys(["spkts", "dpkts", "sbytes", "dbytes", "sappbytes", "dappbytes"], 0)
    for p in session.packets:
        f = parse(p.data)
        side = "s" if f["src"] == client else "d"
        counts[side + "pkts"] += 1
        counts[side + "bytes"] += f["wire"]
        counts[side + "appbytes"] += f.get("app", 0)
    return counts


def tcpdump(path, *args) -> str:
    """tcpdump's verbose reading of a capture (stderr must not report a problem)."""
    done = subprocess.run(["tcpdump", "-nn", "-vvv", "-e", "-r", str(path), *args], capture_output=True,
                          text=True, check=True)
    assert "truncated" not in done.stderr
    return done.stdout


# --- the sessions under test -------------------------------------------------------------------------

def sessions():
    """One of every session helper, over IPv4, IPv6 and VLANs."""
    t = g.T0
    return {
        "tcp_fin": g.tcp_session(V4C, V4S, 40000, 80, [300], [5000], close="fin"),
        "tcp_rst_v6_vlan": g.tcp_session(V6C, V6S, 40001, 443, [100, 200], [3000, 10], close="rst", vlan=10,
                                         start=t + 0.5),
        "tcp_open": g.tcp_session(V4C, V4S, 40002, 22, [b"SSH-2.0-x\r\n"], [40], close="none", start=t + 0.1),
        "tcp_synonly": g.tcp_session(V4C, V4S, 40003, 25, close="synonly", start=t + 0.2),
        "tcp_rstsyn": g.tcp_session(V4C, V4S, 40004, 81, close="rstsyn", start=t + 0.3),
        "dns": g.udp_exchange(V4C, V4S, 43007, 53, [g.dns_query(7)], [g.dns_response(7)], start=t + 1),
        "udp_oneway": g.udp_exchange(V4C, V4S, 43008, 514, [20, 30, 40], [], interval=0.5, start=t + 1),
        "ping": g.ping(V4C, V4S, 0x1234, 3, start=t + 0.2),
        "ping6_qinq": g.ping(V6C, V6S, 7, 2, start=t + 0.3, vlan=(100, 20)),
        "frag": g.fragmented_udp("10.5.0.1", "198.18.5.1", 45000, 7001, 50, 4000, start=t + 2),
        "frag6_reverse": g.fragmented_udp("2001:db8:5::1", "2001:db8:5::2", 45000, 7001, 3000, start=t + 2,
                                          reverse=True),
    }


@pytest.fixture
def capture(tmp_path):
    """All sessions merged into one pcap: (path, sessions)."""
    made = sessions()
    return g.write_pcap(tmp_path / "all.pcap", g.merge(*made.values())), made


# --- tests -------------------------------------------------------------------------------------------

def test_file_header_and_records(capture):
    path, made = capture
    header, records = read_pcap(path)
    assert header == dict(magic=0xA1B2C3D4, version=(2, 4), snaplen=65535, linktype=1)
    assert len(records) == sum(len(s.packets) for s in made.values())
    times = [r[0] for r in records]
    assert times == sorted(times)
    assert all(caplen == orig == len(data) for _, caplen, orig, data in records)


def test_every_frame_parses_with_valid_checksums(capture):
    path, _ = capture
    for _, _, _, data in read_pcap(path)[1]:
        f = parse(data)
        assert f["wire"] >= 60


@pytest.mark.parametrize("name", [name for name in sessions() if not name.startswith("frag")])
def test_truth_matches_frames(name):
    """(Fragments are recounted in test_fragments: only the first carries the UDP header.)"""
    session = sessions()[name]
    assert truth_from_frames(session) == session.truth.counters()
    assert session.truth.stime_us == session.packets[0].ts_us
    assert session.truth.ltime_us == session.packets[-1].ts_us


def test_tcpdump_agrees(capture):
    path, made = capture
    out = tcpdump(path)
    lines = [line for line in out.splitlines() if not line.startswith(" ")]
    assert len(lines) == sum(len(s.packets) for s in made.values())
    for bad in ("incorrect", "bad cksum", "wrong", "[|"):
        assert bad not in out
    tcp_packets = sum(len(s.packets) for n, s in made.items() if n.startswith("tcp"))
    assert out.count("(correct)") == tcp_packets
    assert out.count("[udp sum ok]") == 1 + 1 + 3 + 1       # dns pair, one-way stream, the frag request
    assert out.count("[icmp6 sum ok]") == 4
    assert out.count("ICMP echo request") == 3 and out.count("ICMP echo reply") == 3
    assert "vlan 100, p 0, ethertype 802.1Q (0x8100), vlan 20" in out
    assert "7+ A? example.com." in out and "A 192.0.2.1" in out


def test_tcp_handshake_seq_ack_and_close():
    s = g.tcp_session(V4C, V4S, 40000, 80, [300], [5000], close="fin", isn=(100, 900))
    frames = [parse(p.data) for p in s.packets]
    flags = [f["flags"] for f in frames]
    assert flags[:3] == [g.SYN, g.SYN | g.ACK, g.ACK]
    assert flags[-3:] == [g.FIN | g.ACK, g.FIN | g.ACK, g.ACK]
    assert frames[1]["ack"] == 101 and frames[2]["seq"] == 101 and frames[2]["ack"] == 901
    # the last ACK acknowledges the server's SYN, 5000 data bytes and its FIN
    assert frames[-1]["ack"] == 900 + 1 + 5000 + 1 and frames[-1]["seq"] == 100 + 1 + 300 + 1
    assert max(f["app"] for f in frames) == 1460
    assert [len(p.data) for p in s.packets][:3] == [66, 66, 60]   # 12 option bytes on SYNs; padded ACK


@pytest.mark.parametrize("close, flags", [
    ("synonly", [g.SYN]),
    ("rstsyn", [g.SYN, g.RST | g.ACK]),
    ("none", [g.SYN, g.SYN | g.ACK, g.ACK, g.PSH | g.ACK, g.ACK]),
    ("rst", [g.SYN, g.SYN | g.ACK, g.ACK, g.PSH | g.ACK, g.ACK, g.RST | g.ACK]),
])
def test_tcp_close_variants(close, flags):
    s = g.tcp_session(V4C, V4S, 40000, 80, [10], close=close)
    assert [parse(p.data)["flags"] for p in s.packets] == flags


def test_ipv6_segments_fit_the_mtu():
    s = g.tcp_session(V6C, V6S, 40000, 80, [100], [100_000])
    assert max(len(p.data) for p in s.packets) == 14 + 1500
    assert max(parse(p.data)["app"] for p in s.packets) == 1440


def test_padding_and_no_padding():
    padded = g.tcp_session(V4C, V4S, close="rstsyn")
    bare = g.tcp_session(V4C, V4S, close="rstsyn", pad=False)
    assert [len(p.data) for p in padded.packets] == [66, 60]
    assert [len(p.data) for p in bare.packets] == [66, 54]
    assert bare.truth.dbytes == 54
    tagged = g.udp_exchange(V4C, V4S, requests=[1], responses=[], vlan=30)
    assert len(tagged.packets[0].data) == 60 and parse(tagged.packets[0].data)["vlans"] == [30]


def test_snaplen_truncates_caplen_keeps_orig_len(tmp_path):
    s = g.tcp_session(V4C, V4S, 40000, 80, [300], [5000])
    path = g.write_pcap(tmp_path / "snap.pcap", s.packets, snaplen=96)
    header, records = read_pcap(path)
    assert header["snaplen"] == 96
    for (ts, caplen, orig, data), p in zip(records, s.packets):
        assert orig == len(p.data) and caplen == min(96, len(p.data)) and data == p.data[:96]
    assert sum(orig for _, _, orig, _ in records) == s.truth.bytes
    assert len(tcpdump(path).splitlines()) >= len(records)


def test_linktype_raw(tmp_path):
    packet = g.ipv4(V4C, V4S, g.PROTO_UDP, g.udp(V4C, V4S, 1, 2, b"x"))
    path = g.write_pcap(tmp_path / "raw.pcap", [(int(g.T0 * 1e6), packet)], linktype=g.LINKTYPE_RAW)
    assert read_pcap(path)[0]["linktype"] == 101
    assert "10.0.0.1.1 > 198.18.0.1.2: [udp sum ok] UDP, length 1" in tcpdump(path)


def reassemble(session: g.Session, from_src: bytes) -> bytes:
    """The transport segment rebuilt from one side's fragments, in offset order."""
    pieces = sorted((f["offset"], f["l4"]) for f in map(parse, (p.data for p in session.packets))
                    if f["src"] == from_src)
    assert pieces[0][0] == 0 and all(a + len(d) == b for (a, d), (b, _) in zip(pieces, pieces[1:]))
    return b"".join(d for _, d in pieces)


@pytest.mark.parametrize("client, server", [("10.5.0.1", "198.18.5.1"), ("2001:db8:5::1", "2001:db8:5::2")])
@pytest.mark.parametrize("reverse", [False, True])
def test_fragments(client, server, reverse):
    s = g.fragmented_udp(client, server, 45000, 7001, 50, 4000, reverse=reverse)
    frames = [parse(p.data) for p in s.packets]
    assert all(f["wire"] <= 1514 for f in frames)
    response = [f for f in frames if f["src"] == g.ip(server).packed]
    assert len(response) == 3 and sum(f["mf"] for f in response) == 2
    assert [f["offset"] == 0 for f in response] == ([False, False, True] if reverse else [True, False, False])
    segment = reassemble(s, g.ip(server).packed)
    sport, dport, length = struct.unpack_from("!HHH", segment)
    assert (sport, dport, length) == (7001, 45000, 4008) and segment[8:] == g.filler(4000)
    pseudo = g.pseudo_header(server, client, g.PROTO_UDP, len(segment))
    assert ones_complement_ok(pseudo + segment)
    assert (s.truth.spkts, s.truth.dpkts, s.truth.sappbytes, s.truth.dappbytes) == (1, 3, 50, 4000)
    assert s.truth.dbytes == sum(f["wire"] for f in response)


def test_ipv6_extension_headers(tmp_path):
    segment = g.udp(V6C, V6S, 1000, 2000, b"hello")
    packet = g.ipv6(V6C, V6S, g.PROTO_UDP, segment, extensions=[
        g.hop_by_hop(b"\x05\x02\x00\x00"), g.routing([V6S], segments_left=0), g.dest_options()])
    f = parse(g.l2(packet, V6C, V6S))
    assert f["exts"] == [0, 43, 60] and f["proto"] == 17 and f["app"] == 5
    path = g.write_pcap(tmp_path / "ext.pcap", [(0, g.l2(packet, V6C, V6S))])
    out = tcpdump(path)
    assert "HBH" in out and "RT6" in out and "DSTOPT" in out and "[udp sum ok]" in out


def test_icmp_unreachable_quotes_the_datagram(tmp_path):
    datagram = g.ipv4(V4C, V4S, g.PROTO_UDP, g.udp(V4C, V4S, 48000, 9999, b"q" * 20))
    message = g.icmp_unreachable(datagram)
    f = parse(g.frame(V4S, V4C, g.PROTO_ICMP, message))
    assert f["icmp_type"] == 3 and f["l4"][8:] == datagram[:28]
    path = g.write_pcap(tmp_path / "unreach.pcap", [(0, g.frame(V4S, V4C, g.PROTO_ICMP, message))])
    assert "udp port 9999 unreachable" in tcpdump(path)


def test_arp(tmp_path):
    request = g.arp_frame(1, "10.0.0.1", "10.0.0.2")
    reply = g.arp_frame(2, "10.0.0.2", "10.0.0.1")
    assert len(request) == len(reply) == 60 and request[:6] == g.BROADCAST
    out = tcpdump(g.write_pcap(tmp_path / "arp.pcap", [(0, request), (1, reply)]))
    assert "Request who-has 10.0.0.2 tell 10.0.0.1" in out and "Reply 10.0.0.2 is-at 02:00:0a:00:00:02" in out


def test_malformed_overrides():
    bad = g.ipv4(V4C, V4S, g.PROTO_TCP, b"", total_length=1000, ihl=4, csum=0xBEEF)
    assert bad[0] == 0x44 and struct.unpack_from("!H", bad, 2)[0] == 1000 and bad[10:12] == b"\xbe\xef"
    seg = g.tcp(V4C, V4S, 1, 2, data_offset=15)
    assert seg[12] >> 4 == 15


def test_merge_is_stable_in_time():
    a = g.udp_exchange(V4C, V4S, 1, 2, [1, 1], [1, 1], start=g.T0)
    b = g.udp_exchange(V4C, V4S, 3, 4, [1], [1], start=g.T0 + 0.0005)
    merged = g.merge(a, b)
    assert [p.ts_us for p in merged] == sorted(p.ts_us for p in merged) and len(merged) == 6


@pytest.mark.argus
def test_argus_counts_what_was_sent(tmp_path):
    """Argus (the oracle) meters pcapgen's sessions to their ground truth (IPv4 fragments: first only)."""
    made = {k: v for k, v in sessions().items() if k not in ("ping6_qinq", "frag6_reverse")}
    pcap = g.write_pcap(tmp_path / "all.pcap", g.merge(*made.values()))
    arg = tmp_path / "all.arg"
    subprocess.run([shutil.which("argus") or "/usr/sbin/argus", "-A", "-r", str(pcap), "-w", str(arg)], check=True)
    out = subprocess.run(["racluster", "-X", "-r", str(arg), "-nn", "-c", ",", "-s", "proto", "saddr", "sport",
                          "daddr", "dport", "spkts", "dpkts", "sbytes", "dbytes", "sappbytes", "dappbytes",
                          "-", "not man"], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines()[1:]:
        proto, saddr, sport, daddr, dport, *counts = line.split(",")
        rows[(saddr, sport, daddr)] = dict(zip(("spkts", "dpkts", "sbytes", "dbytes", "sappbytes", "dappbytes"),
                                               map(int, counts)))
    for name, s in made.items():
        t = s.truth
        sport = "0x0008" if t.proto == g.PROTO_ICMP else str(t.sport)
        expected = t.counters()
        if name == "frag":
            expected["dappbytes"] = 1472
        assert rows[(t.saddr, sport, t.daddr)] == expected, name


# --- bench/gen_capture.py uses its own fast builders: hold them to the same checks --------------------

def load_gen_capture():
    """bench/gen_capture.py as a module."""
    spec = importlib.util.spec_from_file_location("gen_capture", Path(__file__).parent.parent / "bench" /
                                                  "gen_capture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_capture_is_valid_exact_and_deterministic(tmp_path):
    gen = load_gen_capture()
    stats = gen.generate_bench(str(tmp_path / "a.pcap"), packets=20_000, sessions=2_000, seed=7)
    gen.generate_bench(str(tmp_path / "b.pcap"), packets=20_000, sessions=2_000, seed=7)
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()
    _, records = read_pcap(tmp_path / "a.pcap")
    assert len(records) == stats["packets"] == 20_000 and sum(stats["kinds"].values()) == 2_000
    assert [r[0] for r in records] == sorted(r[0] for r in records)
    frames = [parse(data) for _, _, _, data in records]      # every checksum verified
    v6 = sum(f["ethertype"] == 0x86DD for f in frames)
    tagged = sum(bool(f["vlans"]) for f in frames)
    assert 0.03 < v6 / len(frames) < 0.15 and 0.05 < tagged / len(frames) < 0.16
    assert any(f["mf"] for f in frames)
    assert {f.get("flags", 0) & (g.FIN | g.RST | g.SYN) for f in frames if f.get("proto") == 6} >= {
        g.SYN, g.FIN, g.RST}


def test_distinct_sessions_have_distinct_tuples(tmp_path):
    gen = load_gen_capture()
    extra = g.udp_exchange("10.250.0.9", "198.51.100.9", 1, 2, [10] * 4, [10] * 4, interval=0.1).packets
    stats = gen.generate_distinct(str(tmp_path / "d.pcap"), sessions=5_000, span_s=1.0, extra=extra)
    _, records = read_pcap(tmp_path / "d.pcap")
    assert len(records) == stats["packets"] == 2 * 5_000 + 8
    frames = [parse(data) for _, _, _, data in records]
    keys = {(f["proto"], *sorted([(f["src"], f["sport"]), (f["dst"], f["dport"])])) for f in frames}
    assert len(keys) == 5_000 + 1
    assert [r[0] for r in records] == sorted(r[0] for r in records)
