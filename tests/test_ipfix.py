"""IPFIX export: every archived session reaches the collector with the same addresses, ports,
protocol, packets and bytes per direction.

The collector is Debian's nfcapd (nfdump 1.7, UDP only) on 127.0.0.1; nfdump 1.7 reads RFC 5103
reverse elements into its "out" counters, so a biflow record shows as in_packets/in_bytes (the
initiator's) and out_packets/out_bytes (the responder's). TCP transport is checked against a small
receiver in this file that decodes the messages with its own IPFIX parser. Nothing is sent anywhere
but 127.0.0.1.
"""
from __future__ import annotations

import collections
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import capture, config, ipfix, recorder

REPO = Path(__file__).resolve().parent.parent

# Real captures covering each template: IPv4 TCP/UDP/ICMP, IPv6 with ICMPv6, ARP, LLC/other
# EtherTypes (MAC-keyed), 802.1Q and QinQ, GRE and PPPoE, fragments, long flows with Status records.
CAPTURES = [
    "basic/dpkt-http.pcap", "basic/pcpp-dns.pcap", "basic/pcpp-icmp.pcapng",
    "basic/tcpdump-icmpv6-nd.pcap", "basic/ipfixprobe-arp.pcap", "basic/nfstream-http_ipv6.pcap",
    "basic/nfstream-dhcp.pcap", "basic/tcpreplay-test.pcap", "basic/pcpp-ipv6_options.pcapng",
    "tcp/tcpdump-tcp_all_flags.pcap", "tcp/nfstream-synscan.pcap", "tcp/tcpdump-tcp_rst_data.pcap",
    "tcp/nfstream-dnp3-long.pcapng", "linktypes/pcpp-vlan.pcap", "linktypes/tcpdump-qinq.pcap",
    "tunnels/pcpp-gre.pcap", "tunnels/pcpp-pppoe-session.pcap", "fragments/pcpp-ip6_fragments.pcap",
    "large/pcpp-many-protocols.pcap", "large/nfstream-tor.pcapng",
]


# --- helpers -------------------------------------------------------------------------------------

def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_files(captures: list[str], data_dir: Path, exports: list[str],
                 extra_config: str = "") -> subprocess.CompletedProcess:
    """`flowtap record -r CAPTURE... -d DATA --export URL...` as a separate process."""
    cmd = [sys.executable, "-m", "appliance.cli", "record", "-q", "-d", str(data_dir)]
    conf = data_dir.parent / "flowtap.toml"
    conf.write_text('[sensor]\nid = "ipfix-test"\n' + extra_config)
    cmd += ["-c", str(conf)]
    for c in captures:
        cmd += ["-r", c]
    for url in exports:
        cmd += ["--export", url]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def archived(data_dir: Path) -> list[dict[str, Any]]:
    """Every session record in the archives, read with sqlite3."""
    rows: list[dict[str, Any]] = []
    for path in sorted((data_dir / "archive").glob("*.sqlite")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            rows += [dict(r) for r in db.execute("SELECT * FROM flows")]
    assert rows
    return rows


def ms(t: float) -> int:
    return round(t * 1e6) // 1000


def kind_of(r: dict[str, Any]) -> str:
    """The template a record should take, decided here independently of ipfix.session_kind."""
    try:
        version = ipaddress.ip_address(r["saddr"]).version
    except ValueError:
        return "l2"
    if r["proto"] > 255:
        return "arp"
    if r["proto"] in (1, 58):
        return "icmp"
    return f"ip{version}"


def addr(a: str | None) -> str | None:
    return None if a is None else str(ipaddress.ip_address(a))


def direction(r: dict[str, Any], reverse: bool) -> dict[str, Any]:
    """One direction of a session as a uniflow record shows it (reverse: the responder's)."""
    s, d = ("d", "s") if reverse else ("s", "d")
    sport, dport = r[s + "port"], r[d + "port"]
    if kind_of(r) == "icmp":                       # type and code, whichever way the record goes
        sport, dport = icmp_type_code(r, reverse)
    return dict(r, saddr=r[s + "addr"], daddr=r[d + "addr"], sport=sport, dport=dport,
                spkts=r[s + "pkts"], sbytes=r[s + "bytes"], dpkts=0 if reverse else r["dpkts"],
                dbytes=0 if reverse else r["dbytes"], sflags=r[s + "flags"], stos=r[s + "tos"],
                smac=r[s + "mac"], dmac=r[d + "mac"], svlan=r[s + "vlan"])


ECHO_LIKE = {1: {0, 8, 13, 14, 15, 16, 17, 18}, 58: {128, 129}}   # queries: dport is an id
ERRORS = {1: {3, 4, 5, 11, 12}, 58: {1, 2, 3, 4}}                 # errors: dport is a quoted port
UNREACH = ["URN", "URH", "URO", "URP", "URF", "URS"]               # Argus names of codes 0-5


def icmp_type_code(r: dict[str, Any], reverse: bool = False) -> tuple[int, int]:
    """The ICMP type and code a collector should get (docs/ipfix.md, "ICMP")."""
    icmp_type = r["sport"]
    if reverse:
        icmp_type = {8: 0, 13: 14, 15: 16, 17: 18, 128: 129}.get(icmp_type, icmp_type)
    if icmp_type in ECHO_LIKE[r["proto"]]:
        return icmp_type, 0
    if icmp_type in ERRORS[r["proto"]]:
        unreach = r["proto"] == 1 and icmp_type == 3 and r["state"] in UNREACH
        return icmp_type, UNREACH.index(r["state"]) if unreach else 0
    return icmp_type, r["dport"]


def expected(r: dict[str, Any], biflow: bool = True) -> tuple:
    """What a collector must show for record r: times, addresses, ports, protocol, counters."""
    kind = kind_of(r)
    sa, da = (None, None) if kind == "l2" else (addr(r["saddr"]), addr(r["daddr"]))
    proto = 0 if kind in ("l2", "arp") else r["proto"]    # an EtherType is not an IP protocol
    sport, dport = (0, 0) if kind in ("l2", "arp") else (r["sport"] or 0, r["dport"] or 0)
    if kind == "icmp" and biflow:
        sport, dport = icmp_type_code(r)
    dpkts, dbytes = (r["dpkts"], r["dbytes"]) if biflow else (0, 0)
    return (ms(r["stime"]), ms(r["ltime"]), sa, da, sport, dport, proto, r["spkts"], r["sbytes"],
            dpkts, dbytes)


def expected_uniflow(rows: list[dict[str, Any]], extra: bool = False) -> collections.Counter:
    """Uniflow: one record per direction that carried packets (one for a session with none)."""
    shape = expected_extra if extra else expected
    out: collections.Counter = collections.Counter()
    for r in rows:
        if r["spkts"] or not r["dpkts"]:
            out[shape(direction(r, False), biflow=False)] += 1
        if r["dpkts"]:
            out[shape(direction(r, True), biflow=False)] += 1
    return out


# --- nfcapd --------------------------------------------------------------------------------------

class Nfcapd:
    """nfcapd on 127.0.0.1:PORT writing into DIR; stop() ends it with SIGTERM (which flushes)."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "nfcapd"
        self.dir.mkdir()
        self.port = free_port()
        self.log = tmp / "nfcapd.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["nfcapd", "-b", "127.0.0.1", "-p", str(self.port), "-w", str(self.dir),
                 "-B", "4000000", "-t", "3600"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "Startup" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "nfcapd did not start: " + self.log.read_text()
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"ipfix+udp://127.0.0.1:{self.port}"

    def stop(self) -> list[dict[str, Any]]:
        """Stop nfcapd and return every flow it stored, from `nfdump -o json` (times in UTC)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        log = self.log.read_text()
        assert "Sequence Errors: 0" in log, log
        out = subprocess.run(["nfdump", "-R", str(self.dir), "-o", "json"], capture_output=True,
                             text=True, env=dict(os.environ, TZ="UTC"), timeout=60, check=True)
        return json.loads(out.stdout) if out.stdout.strip() else []


@pytest.fixture
def nfcapd(tmp_path):
    if shutil.which("nfcapd") is None or shutil.which("nfdump") is None:
        pytest.fail("nfcapd/nfdump not installed (Debian package nfdump)")
    collector = Nfcapd(tmp_path)
    yield collector
    if collector.proc.poll() is None:
        collector.proc.kill()
        collector.proc.wait()


def nf_time(text: str) -> int:
    t = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    return round(t.timestamp() * 1000)


def nf_key(f: dict[str, Any]) -> tuple:
    """An nfdump JSON flow in the shape of ``expected``."""
    sa = f.get("src4_addr") or f.get("src6_addr")
    da = f.get("dst4_addr") or f.get("dst6_addr")
    if "icmp_type" in f:
        sport, dport = f["icmp_type"], f["icmp_code"]
    else:
        sport, dport = f.get("src_port", 0), f.get("dst_port", 0)
    return (nf_time(f["first"]), nf_time(f["last"]), addr(sa), addr(da), sport, dport, f["proto"],
            f["in_packets"], f["in_bytes"], f.get("out_packets", 0), f.get("out_bytes", 0))


def nf_extra(f: dict[str, Any]) -> tuple:
    flags = {c for c in f.get("tcp_flags", "") if c != "."}
    return (nf_key(f), frozenset(flags), f["src_tos"], f["in_src_mac"], f["in_dst_mac"], f["src_vlan"])


def expected_extra(r: dict[str, Any], biflow: bool = True) -> tuple:
    """The forward details nfdump keeps too: TCP flags, TOS, MAC addresses, VLAN."""
    ip = kind_of(r) not in ("l2", "arp")
    flags = frozenset(r["sflags"] or "") if kind_of(r) in ("ip4", "ip6") else frozenset()
    smac, dmac = (r["saddr"], r["daddr"]) if kind_of(r) == "l2" else (r["smac"], r["dmac"])
    return (expected(r, biflow), flags, (r["stos"] or 0) if ip else 0, smac or "00:00:00:00:00:00",
            dmac or "00:00:00:00:00:00", r["svlan"] or 0)


def captures(pcaps_dir: Path) -> list[str]:
    return [str(pcaps_dir / c) for c in CAPTURES]


# --- end to end with nfcapd ----------------------------------------------------------------------

def test_biflow_udp_to_nfcapd(tmp_path, pcaps_dir, nfcapd):
    record_files(captures(pcaps_dir), tmp_path / "data", [nfcapd.url])
    rows = archived(tmp_path / "data")
    flows = nfcapd.stop()
    assert len(flows) == len(rows)
    assert collections.Counter(nf_key(f) for f in flows) == \
        collections.Counter(expected(r) for r in rows)
    assert collections.Counter(nf_extra(f) for f in flows) == \
        collections.Counter(expected_extra(r) for r in rows)
    kinds = collections.Counter(kind_of(r) for r in rows)
    assert all(kinds[k] for k in ("ip4", "ip6", "icmp", "arp", "l2")), kinds
    assert any(r["svlan"] for r in rows) and any(r["cause"] == "Status" for r in rows)
    assert any(r["dpkts"] and r["dbytes"] for r in rows if kind_of(r) == "ip6")


def test_uniflow_udp_to_nfcapd(tmp_path, pcaps_dir, nfcapd):
    record_files(captures(pcaps_dir), tmp_path / "data", [nfcapd.url],
                 extra_config="[export]\nuniflow = true\n")
    rows = archived(tmp_path / "data")
    flows = nfcapd.stop()
    want = expected_uniflow(rows)
    assert sum(want.values()) == sum(1 + bool(r["spkts"] and r["dpkts"]) for r in rows)
    assert sum(bool(r["spkts"] and r["dpkts"]) for r in rows) > 100     # many become two records
    assert collections.Counter(nf_key(f) for f in flows) == want
    assert collections.Counter(nf_extra(f) for f in flows) == expected_uniflow(rows, extra=True)
    assert all(f.get("out_packets", 0) == 0 for f in flows)


# --- a TCP collector written here ----------------------------------------------------------------

def parse_messages(stream: bytes) -> list[tuple[tuple, list]]:
    """Split a byte stream into IPFIX messages by their length field; each becomes
    (header, [(set id, raw set body)]). A message cut off at the end (a closed connection) is
    left out."""
    out = []
    while len(stream) >= 16:
        version, length, export_time, seq, domain = ipfix.HEADER.unpack_from(stream)
        assert version == 10 and length >= 16
        if length > len(stream):
            break
        body, stream = stream[16:length], stream[length:]
        sets = []
        while body:
            set_id, set_len = struct.unpack_from("!HH", body)
            assert 4 <= set_len <= len(body)
            sets.append((set_id, body[4:set_len]))
            body = body[set_len:]
        out.append(((version, length, export_time, seq, domain), sets))
    return out


class Decoder:
    """Templates and data records, decoded generically: each data record is a dict keyed by
    (enterprise number, element id), values as ints (bytes for addresses)."""

    def __init__(self) -> None:
        self.templates: dict[int, list[tuple[int, int, int]]] = {}

    def template_set(self, body: bytes) -> None:
        while len(body) >= 4:
            tid, count = struct.unpack_from("!HH", body)
            body = body[4:]
            fields = []
            for _ in range(count):
                ie, length = struct.unpack_from("!HH", body)
                pen, body = 0, body[4:]
                if ie & 0x8000:
                    pen, = struct.unpack_from("!I", body)
                    body, ie = body[4:], ie & 0x7FFF
                fields.append((pen, ie, length))
            self.templates[tid] = fields

    def data_set(self, tid: int, body: bytes) -> list[dict[tuple[int, int], Any]]:
        fields = self.templates[tid]                 # a data set before its template is an error
        size = sum(f[2] for f in fields)
        records = []
        while len(body) >= size:
            rec, off = {}, 0
            for pen, ie, length in fields:
                raw = body[off:off + length]
                rec[(pen, ie)] = raw if ie in (8, 12, 27, 28, 56, 80) else int.from_bytes(raw, "big")
                off += length
            records.append(rec)
            body = body[size:]
        return records


def ipfix_key(rec: dict[tuple[int, int], Any]) -> tuple:
    """A decoded record in the shape of ``expected`` (biflow or uniflow)."""
    rev = ipfix.PEN_REVERSE
    sa = da = None
    for family, src, dst in ((socket.AF_INET, 8, 12), (socket.AF_INET6, 27, 28)):
        if (0, src) in rec:
            sa, da = socket.inet_ntop(family, rec[(0, src)]), socket.inet_ntop(family, rec[(0, dst)])
    typecode = rec.get((0, 32), rec.get((0, 139)))
    if typecode is not None:
        sport, dport = typecode >> 8, typecode & 0xFF
    else:
        sport, dport = rec.get((0, 7), 0), rec.get((0, 11), 0)
    return (rec[(0, 152)], rec[(0, 153)], addr(sa), addr(da), sport, dport, rec.get((0, 4), 0),
            rec[(0, 2)], rec[(0, 1)], rec.get((rev, 2), 0), rec.get((rev, 1), 0))


class TcpCollector:
    """Accepts IPFIX over TCP on 127.0.0.1; keeps each connection's byte stream.

    :param close_first_after: close the first connection once it has received this many bytes.
    """

    def __init__(self, close_first_after: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.close_first_after = close_first_after
        self.streams: list[bytearray] = []
        self.closed = threading.Event()          # the first connection was closed by us
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"ipfix+tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = bytearray()
            with self.lock:
                first = not self.streams
                self.streams.append(buf)
            threading.Thread(target=self._read, args=(conn, buf, first), daemon=True).start()

    def _read(self, conn: socket.socket, buf: bytearray, first: bool) -> None:
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                with self.lock:
                    buf += data
                    if first and self.close_first_after and len(buf) >= self.close_first_after:
                        break
        if first and self.close_first_after:
            self.closed.set()

    def messages(self, index: int = -1) -> list:
        with self.lock:
            stream = bytes(self.streams[index]) if self.streams else b""
        return parse_messages(stream)

    def records(self, index: int | None = None) -> list[dict]:
        """Decode the data records of one connection (all connections when index is None)."""
        out = []
        indexes = range(len(self.streams)) if index is None else [index]
        for i in indexes:
            decoder = Decoder()
            for _, sets in self.messages(i):
                for set_id, body in sets:
                    if set_id == 2:
                        decoder.template_set(body)
                    elif set_id >= 256:
                        out += decoder.data_set(set_id, body)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tcp_collector():
    c = TcpCollector()
    yield c
    c.close()


def test_tcp_and_udp_collectors_together(tmp_path, pcaps_dir, nfcapd, tcp_collector):
    """Several collectors: the same records reach nfcapd over UDP and a TCP collector."""
    record_files(captures(pcaps_dir)[:12], tmp_path / "data", [nfcapd.url, tcp_collector.url])
    rows = archived(tmp_path / "data")
    want = collections.Counter(expected(r) for r in rows)
    assert collections.Counter(nf_key(f) for f in nfcapd.stop()) == want
    assert collections.Counter(ipfix_key(r) for r in tcp_collector.records()) == want
    messages = tcp_collector.messages()
    assert [s for s, _ in messages[0][1]] == [2]               # templates first, on connect
    assert sum(1 for _, sets in messages for s, _ in sets if s == 2) == 1
    domain = ipfix.observation_domain("ipfix-test")
    assert {h[4] for h, _ in messages} == {domain}
    sequence = 0
    for header, sets in messages:            # RFC 7011 §3.1: data records sent before this message
        assert header[3] == sequence
        sequence += data_records(sets)
    assert sequence == len(rows)


def data_records(sets: list) -> int:
    """Data records in one message's sets (record sizes from the exporter's own templates)."""
    sizes = {t.id: t.struct.size for t in [*ipfix.BIFLOW_TEMPLATES.values(),
                                           *ipfix.UNIFLOW_TEMPLATES.values()]}
    return sum(len(body) // sizes[s] for s, body in sets if s >= 256)


# --- transport behaviour, with hand-built records --------------------------------------------------

class UdpCollector:
    """Keeps every datagram sent to 127.0.0.1:PORT."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"ipfix+udp://127.0.0.1:{self.port}"

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65536))
            except socket.timeout:
                continue

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.datagrams) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()

    def messages(self) -> list:
        out = []
        for d in self.datagrams:
            (msg,) = parse_messages(d)
            out.append(msg)
        return out

    def records(self) -> list[dict]:
        decoder, out = Decoder(), []
        for _, sets in self.messages():
            for set_id, body in sets:
                if set_id == 2:
                    decoder.template_set(body)
                else:
                    out += decoder.data_set(set_id, body)
        return out


@pytest.fixture
def udp_collector():
    c = UdpCollector()
    yield c
    c.close()


def batch(make_record, n: int, start: int = 0, **kw) -> list[dict]:
    return [make_record(seq=start + i, sport=10000 + (start + i) % 50000, **kw) for i in range(n)]


def test_udp_messages_fit_the_path_mtu_and_number_data_records(make_record, udp_collector):
    v6 = dict(saddr="2001:db8::1", daddr="2001:db8:ffff::2")
    with ipfix.Exporter([udp_collector.url], "tap1") as exp:
        exp(batch(make_record, 500) + batch(make_record, 500, 500, **v6))
        assert exp.flush()
    udp_collector.wait_for(exp.stats()[0]["messages"])
    assert all(len(d) <= ipfix.UDP_MAX_MESSAGE for d in udp_collector.datagrams)
    messages = udp_collector.messages()
    assert [s for s, _ in messages[0][1]] == [2]              # templates before any data
    sequence = 0
    for header, sets in messages:
        assert header[3] == sequence and header[4] == ipfix.observation_domain("tap1")
        sequence += data_records(sets)
    assert sequence == 1000
    got = collections.Counter(ipfix_key(r) for r in udp_collector.records())
    assert got == collections.Counter(expected(r) for r in batch(make_record, 500)
                                      + batch(make_record, 500, 500, **v6))


def test_udp_templates_are_resent_every_n_messages_and_every_t_seconds(make_record, udp_collector):
    with ipfix.Exporter([udp_collector.url], "tap1", template_messages=4,
                        template_interval=3600) as exp:
        for i in range(6):
            exp(batch(make_record, 60, 60 * i))
        exp.flush()
    udp_collector.wait_for(exp.stats()[0]["messages"])
    kinds = ["T" if sets[0][0] == 2 else "D" for _, sets in udp_collector.messages()]
    assert kinds[0] == "T" and "DDDDD" not in "".join(kinds)
    assert kinds.count("T") == -(-kinds.count("D") // 4)      # one per 4 data messages, rounded up
    udp_collector.datagrams.clear()
    with ipfix.Exporter([udp_collector.url], "tap1", template_interval=1.0) as exp:
        exp(batch(make_record, 5))
        exp.flush()
        exp(batch(make_record, 5))                           # within the interval: no templates
        exp.flush()
        time.sleep(1.2)
        exp(batch(make_record, 5))                           # interval passed: templates again
        exp.flush()
    udp_collector.wait_for(5)
    kinds = ["T" if sets[0][0] == 2 else "D" for _, sets in udp_collector.messages()]
    assert kinds == ["T", "D", "D", "T", "D"]


def test_lossless_mode_waits_for_the_sender_instead_of_dropping(make_record, udp_collector):
    with ipfix.Exporter([udp_collector.url], "tap1", lossless=True, queue_records=100,
                        udp_rate=2000) as exp:
        for i in range(20):
            exp(batch(make_record, 100, 100 * i))
        assert exp.flush()
        stats = exp.stats()[0]
    assert stats["records"] == 2000 and stats["dropped"] == 0
    udp_collector.wait_for(stats["messages"])
    assert len(udp_collector.records()) == 2000


def test_unreachable_tcp_collector_never_blocks_and_counts_drops(make_record):
    port = free_port(socket.SOCK_STREAM)                     # nothing listens there
    exp = ipfix.Exporter([f"ipfix+tcp://127.0.0.1:{port}"], "tap1", queue_records=1000,
                         backoff=(5.0, 5.0))
    slowest = 0.0
    for i in range(5):
        t = time.monotonic()
        exp(batch(make_record, 600, 600 * i))
        slowest = max(slowest, time.monotonic() - t)
    t = time.monotonic()
    exp.close()
    assert time.monotonic() - t < 3.0                        # no waiting out the 5-s backoff
    stats = exp.stats()[0]
    assert slowest < 0.5
    assert stats["records"] == 0 and stats["dropped"] == 3000
    assert stats["errors"] >= 1 and "connect" in stats["last_error"] and not stats["connected"]


def test_udp_collector_down_loses_records_but_never_blocks(make_record):
    port = free_port()                                       # nothing listens: ICMP refusals
    exp = ipfix.Exporter([f"ipfix+udp://127.0.0.1:{port}"], "tap1")
    for i in range(5):
        t = time.monotonic()
        exp(batch(make_record, 100, 100 * i))
        assert time.monotonic() - t < 0.5
        exp.flush()
    exp.close()
    stats = exp.stats()[0]
    assert stats["errors"] >= 1 and stats["dropped"] >= 1
    assert stats["records"] + stats["dropped"] == 500


def test_tcp_reconnects_resends_templates_and_restarts_the_sequence(make_record):
    templates = len(ipfix.template_message(ipfix.Encoder().template_records(), 0, 1, 0))
    collector = TcpCollector(close_first_after=templates + 1)
    try:
        exp = ipfix.Exporter([collector.url], "tap1", backoff=(0.05, 0.2))
        first, second = batch(make_record, 10), batch(make_record, 20, 100)
        exp(first)
        assert exp.flush() and collector.closed.wait(5)
        exp(second)
        assert exp.flush()
        deadline = time.monotonic() + 5
        while len(collector.records(1) if len(collector.streams) > 1 else []) < 20:
            assert time.monotonic() < deadline, exp.stats()
            time.sleep(0.02)
        exp.close()
    finally:
        collector.close()
    stats = exp.stats()[0]
    assert stats["connects"] == 2 and stats["dropped"] == 0
    again = collector.messages(1)
    assert [s for s, _ in again[0][1]] == [2] and again[1][0][3] == 0   # templates, sequence 0
    assert collections.Counter(ipfix_key(r) for r in collector.records(1)) == \
        collections.Counter(expected(r) for r in second)


def test_encoder_fields(make_record):
    rev = ipfix.PEN_REVERSE
    enc = ipfix.Encoder()
    r = make_record(sflags="FSPA", dflags="SA", stos=8, dtos=16, sttl=64, dttl=57, svlan=10,
                    dvlan=20, cause="Timeout", dir="<?>")
    ((tid, data),) = enc.encode([r])
    decoder = Decoder()
    decoder.template_set(ipfix.BIFLOW_TEMPLATES["ip4"].record)
    (got,) = decoder.data_set(tid, data)
    assert tid == 256 and got[(0, 136)] == 1 and got[(0, 239)] == 0
    assert got[(0, 6)] == 0b11011 and got[(rev, 6)] == 0b10010           # F S P A / S A
    assert (got[(0, 5)], got[(rev, 5)], got[(0, 192)], got[(rev, 192)]) == (8, 16, 64, 57)
    assert (got[(0, 58)], got[(rev, 58)]) == (10, 20)
    assert (got[(0, 401)], got[(rev, 401)]) == (r["sappbytes"], r["dappbytes"])
    assert got[(0, 56)] == bytes.fromhex("020000000001") and got[(0, 80)] == bytes.fromhex("020000000002")
    assert (got[(0, 152)], got[(0, 153)]) == (1700000000000, 1700000001500)
    for cause, reason in {"Timeout": 1, "Status": 2, "Start": 2, "Stop": 3, "Shutdown": 4,
                          "Evict": 5}.items():
        ((_, data),) = enc.encode([make_record(cause=cause)])
        assert decoder.data_set(256, data)[0][(0, 136)] == reason
    # which template each kind of session takes; what fits none is counted, not sent
    kinds = [make_record(saddr="2001:db8::1", daddr="2001:db8::2"),
             make_record(proto=1, sport=8, dport=4242, state="ECO"),
             make_record(proto=58, saddr="2001:db8::1", daddr="2001:db8::2", sport=1, dport=80,
                         state="UNR"),
             make_record(proto=2054, sport=None, dport=None, dir="who"),
             make_record(proto=0x88CC, saddr="02:00:00:00:00:01", daddr="01:80:c2:00:00:0e",
                         sport=None, dport=None), make_record(saddr="not-an-address")]
    assert [t for t, _ in enc.encode(kinds)] == [257, 258, 259, 260, 261]
    assert enc.skipped == 1
    decoder.template_set(ipfix.BIFLOW_TEMPLATES["icmp4"].record)
    (echo,) = decoder.data_set(258, enc.encode(kinds[1:2])[0][1])
    assert echo[(0, 32)] == 8 << 8                             # echo: code 0 (dport is the id)
    unreach = make_record(proto=1, sport=3, dport=53, state="URP")
    assert ipfix.icmp_type_code(unreach) == (3, 3)             # code from the state, not dport


def test_uniflow_gives_one_record_per_direction_with_packets(make_record):
    enc = ipfix.Encoder(uniflow=True)
    decoder = Decoder()
    decoder.template_set(ipfix.UNIFLOW_TEMPLATES["ip4"].record)
    both, one_way = make_record(), make_record(dpkts=0, dbytes=0, dappbytes=0, dmac=None)
    out = enc.encode([both, one_way])
    assert [t for t, _ in out] == [272, 272, 272]
    fwd, rev, single = [decoder.data_set(t, d)[0] for t, d in out]
    assert not any(pen for pen, _ in fwd)                      # no enterprise elements at all
    assert (socket.inet_ntoa(rev[(0, 8)]), rev[(0, 7)], rev[(0, 11)], rev[(0, 2)], rev[(0, 1)]) == \
        (both["daddr"], both["dport"], both["sport"], both["dpkts"], both["dbytes"])
    assert rev[(0, 56)] == bytes.fromhex("020000000002")       # the responder's MAC is the source
    assert (single[(0, 2)], single[(0, 1)]) == (one_way["spkts"], one_way["sbytes"])


def test_templates_and_messages_are_well_formed():
    for templates in (ipfix.BIFLOW_TEMPLATES, ipfix.UNIFLOW_TEMPLATES):
        ids = [t.id for t in templates.values()]
        assert len(set(ids)) == len(ids) and min(ids) >= 256
        message = ipfix.template_message([t.record for t in templates.values()], 0, 1, 0)
        assert len(message) <= ipfix.UDP_MAX_MESSAGE
        for t in templates.values():
            names = [f.name for f in t.fields]
            assert len(set(names)) == len(names)
            assert all(f.reverse == f.name.startswith("reverse") for f in t.fields)
            assert any(f.reverse for f in t.fields) == t.biflow
    spec = ipfix.R_PKTS.spec
    assert spec == struct.pack("!HHI", 0x8002, 8, 29305)
    with pytest.raises(ValueError):
        ipfix.pack_messages([(256, bytes(2000))], 1400, 0, 1, 0)


def test_observation_domain_is_a_stable_hash_of_the_sensor_id():
    assert ipfix.observation_domain("tap1") == 0xDC634A84      # SHA-256("tap1")[:4], every run
    assert ipfix.observation_domain("tap2") != ipfix.observation_domain("tap1")


# --- collectors and the capture filter -----------------------------------------------------------

def test_parse_collector():
    c = ipfix.parse_collector("ipfix+tcp://[2001:db8::1]:9000")
    assert (c.transport, c.host, c.port) == ("tcp", "2001:db8::1", 9000)
    assert ipfix.parse_collector("ipfix+udp://192.0.2.1").port == 4739
    for bad in ("udp://192.0.2.1:4739", "ipfix+udp://192.0.2.1:70000", "ipfix+udp://:4739",
                "ipfix+udp://192.0.2.1:4739/path", "ipfix+udp://192.0.2.1:x"):
        with pytest.raises(ipfix.ExportError):
            ipfix.parse_collector(bad)


def test_exclusion_filter_text():
    assert ipfix.exclusion_filter([]) == "" and ipfix.capture_filter("tcp", []) == "tcp"
    udp = "not ((udp and (dst host 192.0.2.10) and dst port 4739))"
    assert ipfix.exclusion_filter(["ipfix+udp://192.0.2.10:4739"]) == udp
    assert ipfix.capture_filter("", ["ipfix+udp://192.0.2.10:4739"]) == udp
    assert ipfix.capture_filter("vlan or ip", ["ipfix+udp://192.0.2.10:4739"]) == f"(vlan or ip) and {udp}"
    tcp = ipfix.exclusion_filter(["ipfix+tcp://[2001:db8::7]:4739"])
    assert tcp == ("not ((tcp and (((dst host 2001:db8::7) and dst port 4739) or "
                   "((src host 2001:db8::7) and src port 4739))))")
    with pytest.raises(ipfix.ExportError):
        ipfix.exclusion_filter(["ipfix+udp://no-such-host.invalid:4739"])


def meter(path: Path, bpf: str) -> list[tuple]:
    """Meter a capture through a kernel-style BPF filter (libpcap applies it to files too)."""
    out = []
    with capture.Capture.open_file(str(path)) as cap:
        cap.set_filter(bpf)
        while cap.poll() != capture.lib.SENSOR_EOF:
            out += [capture.to_record(r, "t") for r in cap.drain_raw(cap.last_packet_us)]
        cap.end_all()
        out += [capture.to_record(r, "t") for r in cap.drain_raw(cap.last_packet_us)]
    return sorted((r["saddr"], r["sport"], r["daddr"], r["dport"], r["proto"]) for r in out)


def test_exclusion_filter_compiles_and_keeps_export_traffic_out(pcaps_dir):
    """dpkt-http.pcap has a DNS query to 145.253.2.203:53 and HTTP to 65.208.228.223:80: as if they
    were collectors, the sensor must not meter them (TCP: neither direction)."""
    path = pcaps_dir / "basic/dpkt-http.pcap"
    everything = meter(path, "")
    assert ("145.254.160.237", 3009, "145.253.2.203", 53, 17) in everything
    no_udp = meter(path, ipfix.capture_filter("ip", ["ipfix+udp://145.253.2.203:53"]))
    assert ("145.254.160.237", 3009, "145.253.2.203", 53, 17) not in no_udp
    no_tcp = meter(path, ipfix.capture_filter("", ["ipfix+tcp://65.208.228.223:80"]))
    assert not [f for f in no_tcp if "65.208.228.223" in f]
    assert len(no_tcp) == len(everything) - 1


def test_live_recorder_excludes_the_collectors(tmp_path, monkeypatch):
    seen = {}

    def open_live(ifaces, flows, bpf, *args):
        seen["bpf"] = bpf
        raise capture.CaptureError("stop here")
    monkeypatch.setattr(recorder.Capture, "open_live", open_live)
    cfg = config.from_dict({"sensor": {"id": "tap1"},
                            "capture": {"interfaces": ["lo"], "bpf": "not arp"},
                            "archive": {"dir": str(tmp_path / "archive")},
                            "export": {"collectors": ["ipfix+udp://127.0.0.1:4739"]}})
    rec = recorder.Recorder(cfg, runtime_dir=str(tmp_path / "run"))
    with pytest.raises(capture.CaptureError):
        rec.record_live()
    if rec.writer is not None:
        rec.writer.close(time.time())
    assert seen["bpf"] == "(not arp) and not ((udp and (dst host 127.0.0.1) and dst port 4739))"


def test_record_refuses_a_bad_collector_url(runner, tmp_path, pcaps_dir):
    from appliance.cli import cli
    result = runner.invoke(cli, ["record", "-q", "-d", str(tmp_path), "-r",
                                 str(pcaps_dir / "basic/dpkt-http.pcap"),
                                 "--export", "ipfix+udp://127.0.0.1:99999"])
    assert result.exit_code == 2 and "export.collectors" in result.stderr


def test_docs_map_every_field():
    doc = (REPO / "docs" / "ipfix.md").read_text()
    for templates in (ipfix.BIFLOW_TEMPLATES, ipfix.UNIFLOW_TEMPLATES):
        for t in templates.values():
            for f in t.fields:
                assert f"`{f.name}`" in doc, f.name
                assert f"| {f.ie} " in doc or f"| {f.ie}|" in doc, f.ie
    for column in ("srcid", "seq", "state", "tcprtt", "sretrans", "community_id", "history"):
        assert f"`{column}`" in doc


@pytest.mark.live
def test_live_recorder_never_meters_its_own_export(tmp_path, udp_collector):
    """The real recorder on lo, exporting to a collector on lo: the export datagrams cross the
    captured interface, yet no session of theirs is archived or exported; other traffic is."""
    if os.geteuid() != 0:
        pytest.fail("live test: capture on lo needs root (CI runs as root)")
    conf = tmp_path / "flowtap.toml"
    conf.write_text('[sensor]\nid = "ipfix-live"\n[flows]\ntimeout_udp = 1\n')
    run_dir, data = tmp_path / "run", tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "record", "-q", "-c", str(conf),
                             "-i", "lo", "-d", str(data), "--runtime-dir", str(run_dir),
                             "--export", udp_collector.url], cwd=REPO, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while not (run_dir / "status.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        target = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(5):
                s.sendto(b"x" * 100, ("127.0.0.1", target))
        deadline = time.monotonic() + 20                     # the flow times out and is exported
        while not udp_collector.datagrams or not udp_collector.records():
            assert time.monotonic() < deadline, "nothing exported"
            time.sleep(0.1)
        time.sleep(2.5)                                      # export traffic crossed lo meanwhile
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    rows = archived(data)
    ports = {(r["proto"], r["dport"]) for r in rows} | {(r["proto"], r["sport"]) for r in rows}
    assert (17, target) in ports
    assert (17, udp_collector.port) not in ports
    exported = {ipfix_key(r)[5] for r in udp_collector.records()}
    assert target in exported and udp_collector.port not in exported
