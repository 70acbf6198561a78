"""Hostile traffic through the namespace bridge while the real recorder meters it.

Three floods from h1 (raw frames on an AF_PACKET socket in h1's namespace; one prebuilt frame whose
addresses and ports are patched in place for each packet):

1. a SYN flood from 1 M spoofed (address, port) sources (198.18.0.0/15, RFC 2544's benchmark range);
2. a fragment flood: non-first fragments with random ids and first fragments never completed, from
   spoofed sources, so both the fragment table and the flow table are under pressure;
3. flows crafted to collide under an unkeyed hash: same addresses, ports with sport ^ dport and
   sport + dport constant (what an XOR or additive hash of the key puts in one bucket). With
   SipHash keyed by a random seed they must cost what random ports cost: the recorder's CPU time
   per packet is compared between the crafted flood and a random-port flood of the same size, and
   so is the time the C core takes to meter the same two floods from capture files.

For each: the recorder stays up (same pid, status.json fresh), flows_active <= capacity, evictions
and kernel drops are counted and shown in status.json, and RSS stays bounded by the table's memory
(capacity x sensor_entry_size()) plus a margin. The IP header checksums are left zero so that h2's
kernel drops the frames at once (the bridge and the sensor do not check them); h2 has no route to
the spoofed sources anyway. Nothing leaves the namespaces.

Needs root: marked ``live``; without root it fails, it does not skip.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import time
from pathlib import Path

import pytest

from appliance import capture
from conftest_live import bridge, lab, mac_of, recorder, socket_in, wait_for  # noqa: F401 (fixtures)

pytestmark = pytest.mark.live

CAPACITY = 65_536
MAX_FRAGS = 1_024
CONFIG = {"flows": {"max_flows": CAPACITY, "max_frags": MAX_FRAGS, "timeout_tcp": 60,
                    "status_interval": 0},
          "capture": {"ring_bytes": 32 << 20}}
MIB = 1 << 20
RSS_MARGIN = 96 * MIB          # Python, SQLite's cache, record batches: beyond the table itself
SPOOF_BASE = 198 << 24 | 18 << 16          # 198.18.0.0/15
ETH_IP = 0x0800


# -- frame building and sending -------------------------------------------------------------------

def ipv4_header(src: int, dst: bytes, proto: int, payload_len: int, ident: int = 0, frag: int = 0) -> bytes:
    """An IPv4 header with a zero checksum (see the module docstring)."""
    return struct.pack("!BBHHHBBHI4s", 0x45, 0, 20 + payload_len, ident, frag, 64, proto, 0, src, dst)


class Sender:
    """An AF_PACKET socket on h1's eth0 and a counter of frames the kernel accepted."""

    def __init__(self, lab):
        self.sock = socket_in(lab.h1, socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind(("eth0", 0))
        self.sent = 0

    def send(self, frame) -> None:
        while True:
            try:
                self.sock.send(frame)
                self.sent += 1
                return
            except BlockingIOError:
                time.sleep(0.0005)
            except OSError as exc:            # ENOBUFS: the queue is full; try again
                if exc.errno != 105:
                    raise
                time.sleep(0.0005)

    def close(self) -> None:
        self.sock.close()


def eth(lab) -> bytes:
    return mac_of(lab, "h2") + mac_of(lab, "h1") + struct.pack("!H", ETH_IP)


def syn_flood(lab, sender: Sender, start: int, n: int) -> None:
    """n SYNs to h2:80 from the distinct spoofed (address, port) sources start .. start + n."""
    tcp = struct.pack("!HHIIBBHHH", 0, 80, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    frame = bytearray(eth(lab) + ipv4_header(0, socket.inet_aton(lab.addr["h2"]), 6, len(tcp)) + tcp)
    for i in range(start, start + n):
        struct.pack_into("!I", frame, 26, SPOOF_BASE | (i & 0x1FFFF))
        struct.pack_into("!H", frame, 34, 1024 + (i >> 17))
        sender.send(frame)


def fragment_flood(lab, sender: Sender, n_later: int, n_first: int, seed: int = 1) -> None:
    """Non-first fragments with random ids and offsets, and first fragments (UDP header, more
    fragments set) that are never completed; sources spoofed over 4096 addresses."""
    rng = random.Random(seed)
    dst = socket.inet_aton(lab.addr["h2"])
    later = bytearray(eth(lab) + ipv4_header(0, dst, 17, 64) + b"\x00" * 64)
    udp = struct.pack("!HHHH", 0, 53, 8 + 56, 0) + b"\x00" * 56
    first = bytearray(eth(lab) + ipv4_header(0, dst, 17, len(udp), frag=0x2000) + udp)
    for i in range(max(n_later, n_first)):
        if i < n_later:
            struct.pack_into("!HH", later, 18, rng.getrandbits(16),
                             rng.choice((0x2000, 0)) | rng.randrange(1, 0x1FFF))
            struct.pack_into("!I", later, 26, SPOOF_BASE | rng.getrandbits(12))
            sender.send(later)
        if i < n_first:
            struct.pack_into("!H", first, 18, rng.getrandbits(16))
            struct.pack_into("!I", first, 26, SPOOF_BASE | rng.getrandbits(12))
            struct.pack_into("!H", first, 34, 1024 + rng.getrandbits(15))
            sender.send(first)


def port_pairs(n: int, crafted: bool, seed: int = 2) -> list[tuple[int, int]]:
    """n (sport, dport) pairs: crafted ones share sport ^ dport == 0xFFFF (so sport + dport ==
    65535 as well), random ones are distinct random pairs."""
    if crafted:
        return [(p, 0xFFFF ^ p) for p in range(1024, 1024 + n)]
    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n:
        pairs.add((rng.randrange(1024, 65536), rng.randrange(1, 65536)))
    return sorted(pairs, key=lambda _: rng.random())


def udp_frames(lab, pairs: list[tuple[int, int]], rounds: int):
    """h1 -> h2 UDP frames, every pair `rounds` times (so most packets look a flow up)."""
    udp = struct.pack("!HHHH", 0, 0, 8 + 18, 0) + b"\x00" * 18
    src = struct.unpack("!I", socket.inet_aton(lab.addr["h1"]))[0]
    frame = bytearray(eth(lab) + ipv4_header(src, socket.inet_aton(lab.addr["h2"]), 17, len(udp)) + udp)
    for _ in range(rounds):
        for sport, dport in pairs:
            struct.pack_into("!HH", frame, 34, sport, dport)
            yield frame


# -- observing the recorder -----------------------------------------------------------------------

def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled(rec, sent: int, timeout: float = 45) -> dict:
    """Wait until the recorder has metered or counted as dropped everything sent (status.json)."""
    def done():
        st = rec.status()
        return st if st and st["packets"] + st["kernel_drops"] >= sent else None
    wait_for(done, timeout, f"the recorder to meter or count {sent:,} frames", every=0.25)
    time.sleep(1.5)                       # one more status.json after the last batch
    return rec.status()


STOP_TIMEOUT = 60    # a full table ends as one Shutdown record per flow; systemd allows 90 s


def stop(rec, what: str) -> None:
    """SIGTERM; the recorder must exit 0 (every open flow written first). Prints how long it took."""
    t0 = time.monotonic()
    assert rec.stop(timeout=STOP_TIMEOUT) == 0
    print(f"{what}: stopped by SIGTERM in {time.monotonic() - t0:.1f} s")


def check_alive(rec, memory_base: int) -> dict:
    """The common assertions: same pid, fresh status, table within capacity, RSS bounded."""
    assert not rec.exited(), f"the recorder died:\n{rec.log()[-3000:]}"
    st = rec.status()
    assert st["pid"] == rec.pid, "status.json is not from the recorder we started"
    assert time.time() - st["time"] < 5, f"status.json is stale ({time.time() - st['time']:.1f} s old)"
    assert st["state"] == "recording"
    assert st["flows_capacity"] == CAPACITY
    assert 0 <= st["flows_active"] <= CAPACITY
    for key in ("flows_evicted", "kernel_drops", "interface_drops", "decode_errors", "records_written"):
        assert key in st, f"status.json lacks {key}"
    table = CAPACITY * capture.lib.sensor_entry_size()
    now = rss(rec.pid)
    assert now <= memory_base + table + RSS_MARGIN, \
        f"RSS {now / MIB:.0f} MiB > start {memory_base / MIB:.0f} + table {table / MIB:.0f} + margin"
    return st


# -- the floods -----------------------------------------------------------------------------------

SYN_SOURCES = 1_000_000


def test_syn_flood_from_a_million_spoofed_sources(lab, recorder):
    rec = recorder(config=CONFIG)
    base = rss(rec.pid)
    sender = Sender(lab)
    t0 = time.monotonic()
    try:
        syn_flood(lab, sender, 0, SYN_SOURCES // 2)
        half = settled(rec, sender.sent)
        rss_half = rss(rec.pid)
        syn_flood(lab, sender, SYN_SOURCES // 2, SYN_SOURCES // 2)
    finally:
        sender.close()
    send_s = time.monotonic() - t0
    st = settled(rec, sender.sent)
    st = check_alive(rec, base)
    rss_end = rss(rec.pid)
    print(f"\nSYN flood: sent {sender.sent:,} frames ({sender.sent / send_s:,.0f}/s), metered {st['packets']:,},"
          f" kernel drops {st['kernel_drops']:,}, evicted {st['flows_evicted']:,}, active {st['flows_active']:,},"
          f" records written {st['records_written']:,}; RSS start {base / MIB:.0f} MiB, half "
          f"{rss_half / MIB:.0f}, end {rss_end / MIB:.0f} (table {CAPACITY * capture.lib.sensor_entry_size() / MIB:.0f})")
    assert st["packets"] + st["kernel_drops"] >= sender.sent
    assert st["packets"] <= sender.sent + 1000                  # a few stray frames at most
    assert st["flows_active"] == CAPACITY                       # SYN-only flows never time out here
    # Every metered SYN beyond the table's capacity pushed the least recently used flow out.
    assert st["flows_evicted"] >= min(st["packets"], SYN_SOURCES) - CAPACITY - 1000
    assert st["flows_evicted"] > half["flows_evicted"] > 0
    assert rss_end - rss_half < 32 * MIB, "RSS keeps growing with the number of sources"
    stop(rec, "SYN flood")


def test_fragment_flood(lab, recorder):
    rec = recorder(config=CONFIG)
    base = rss(rec.pid)
    sender = Sender(lab)
    try:
        fragment_flood(lab, sender, n_later=200_000, n_first=100_000)
    finally:
        sender.close()
    st = settled(rec, sender.sent)
    st = check_alive(rec, base)
    full = st["decode_errors"]["fragment_table_full"]
    print(f"\nfragment flood: sent {sender.sent:,} fragments, metered {st['packets']:,}, kernel drops "
          f"{st['kernel_drops']:,}, fragment table full {full:,} (table {MAX_FRAGS}), flows active "
          f"{st['flows_active']:,}, evicted {st['flows_evicted']:,}, records written {st['records_written']:,};"
          f" RSS {rss(rec.pid) / MIB:.0f} MiB (start {base / MIB:.0f})")
    assert st["packets"] + st["kernel_drops"] >= sender.sent
    # 300 k fragment ids against a 1,024-entry table: it overflowed, and said so.
    assert full >= min(st["packets"], sender.sent) - MAX_FRAGS * 4 - 1000
    stop(rec, "fragment flood")
    # What the first fragments started is on record after the stop (Shutdown or earlier causes).
    assert rec.records(), "no records at all after the fragment flood"


FLOWS = 60_000      # crafted pairs: one per source port 1024..61023, under the table's capacity
ROUNDS = 3


def _flood_cpu(lab, rec, crafted: bool) -> tuple[float, int, float]:
    """(recorder CPU seconds, frames sent, seconds to send) for one UDP flood."""
    sender = Sender(lab)
    before = rec.status()
    cpu0 = cpu_seconds(rec.pid)
    t0 = time.monotonic()
    try:
        for frame in udp_frames(lab, port_pairs(FLOWS, crafted), ROUNDS):
            sender.send(frame)
    finally:
        sender.close()
    elapsed = time.monotonic() - t0
    settled(rec, before["packets"] + before["kernel_drops"] + sender.sent)
    return cpu_seconds(rec.pid) - cpu0, sender.sent, elapsed


def _meter_file_seconds(tmp_path: Path, crafted: bool) -> float:
    """Seconds the C core takes to meter the flood from a pcap (best of 3), no Python per packet."""
    from appliance.config import FlowsConfig
    path = tmp_path / f"{'crafted' if crafted else 'random'}.pcap"
    mac1, mac2 = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        udp = struct.pack("!HHHH", 0, 0, 26, 0) + b"\x00" * 18
        frame = bytearray(mac2 + mac1 + struct.pack("!H", ETH_IP)
                          + ipv4_header(0x0A4D0001, socket.inet_aton("10.77.0.2"), 17, len(udp)) + udp)
        pairs = port_pairs(FLOWS, crafted)
        for r in range(10):
            for i, (sport, dport) in enumerate(pairs):
                struct.pack_into("!HH", frame, 34, sport, dport)
                f.write(struct.pack("<IIII", 1700000000 + r, i % 1000000, len(frame), len(frame)))
                f.write(frame)
    flows = FlowsConfig(max_flows=CAPACITY)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        with capture.Capture.open_file(str(path), flows) as cap:
            while cap.poll() != capture.lib.SENSOR_EOF:
                cap.drain_count(cap.last_packet_us)
            st = cap.stats()
        best = min(best, time.perf_counter() - t0)
        assert st["packets"] == 10 * FLOWS and st["flows_created"] == FLOWS, st
    return best


def test_flows_crafted_to_collide_cost_what_random_flows_cost(lab, recorder, tmp_path):
    results = {}
    for crafted in (False, True):
        rec = recorder(config=CONFIG, name=f"collide-{crafted}")
        base = rss(rec.pid)
        cpu, sent, elapsed = _flood_cpu(lab, rec, crafted)
        st = check_alive(rec, base)
        results[crafted] = (cpu, sent, elapsed, st)
        assert st["flows_active"] <= CAPACITY
        stop(rec, f"{'crafted' if crafted else 'random'} ports")
    file_s = {crafted: _meter_file_seconds(tmp_path, crafted) for crafted in (False, True)}
    (cpu_r, sent_r, el_r, st_r), (cpu_c, sent_c, el_c, st_c) = results[False], results[True]
    print(f"\ncollision flood: {FLOWS:,} flows x {ROUNDS}; random ports: {sent_r:,} frames in {el_r:.1f} s, "
          f"recorder CPU {cpu_r:.2f} s, drops {st_r['kernel_drops']}; crafted (sport ^ dport = 0xffff): "
          f"{sent_c:,} frames in {el_c:.1f} s, recorder CPU {cpu_c:.2f} s, drops {st_c['kernel_drops']}; "
          f"C core on the same floods from a file (600,000 packets): random {file_s[False] * 1e3:.0f} ms, "
          f"crafted {file_s[True] * 1e3:.0f} ms")
    # With chains as long as the flood (an unkeyed hash), each lookup would walk tens of
    # thousands of entries: hundreds of times slower. Keyed, the two cost the same within noise.
    assert file_s[True] < 2.0 * file_s[False] + 0.05
    assert cpu_c < 2.0 * cpu_r + 0.5
    assert el_c < 2.0 * el_r + 1.0
