"""Deterministic generator of the benchmark captures (standard library only).

Two captures:

* the benchmark mix (``--packets N --sessions S``): TCP with handshakes, data and FIN or RST
  teardowns (most), half-open SYNs, rejected SYNs, connections left open, DNS query/response,
  other UDP request/response and one-way streams, ICMP echo, fragmented UDP datagrams; ~8% of
  sessions over IPv6 and ~10% 802.1Q-tagged; sessions interleaved in time with a few thousand open
  at once; exactly N packets and S sessions with distinct 5-tuples;
* ``--distinct-sessions N``: N short sessions with distinct 5-tuples (three in four UDP
  request/response, one in four SYN answered by RST|ACK) over a few seconds, for the flow-table
  eviction test; ``generate_distinct`` can merge extra packets (e.g. long-lived sessions from
  ``tests/pcapgen.py``) into it.

Speed comes from precomputing, per session, the header bytes and the partial Internet checksums
of both directions: a packet is then a few additions, one ``struct.pack`` per header and a slice
of a fixed payload block whose checksums are prefix sums.

Example:
    python bench/gen_capture.py --packets 2000000 --sessions 200000 -o bench/out/bench-2m.pcap
    python bench/gen_capture.py --distinct-sessions 1000000 -o bench/out/distinct-1m.pcap
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import struct
import sys
import time
from typing import Iterable, Iterator

T0_US = 1_700_000_000 * 1_000_000       # capture start (2023-11-14T22:13:20Z), same as tests/pcapgen.T0
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
WINDOW = 64240
MIN_FRAME = 60
SNAPLEN = 65535

_V4 = struct.Struct("!HHHHHH8s")       # ver/ihl+tos, total length, id, flags/offset, ttl+proto, checksum, addrs
_V6 = struct.Struct("!IH")             # version/class/label, payload length (next header etc. follow)
_TCP = struct.Struct("!HHIIHHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")
_FRAG6 = struct.Struct("!BBHI")
_VLAN = struct.Struct("!HH")
_RECORD = struct.Struct("<IIII")
_PAD = bytes(MIN_FRAME)

# One fixed payload block; FILL_SUM[n] is the 16-bit-word sum of FILL[:n] (odd tail as a high byte).
FILL = random.Random(0xF10).randbytes(9000)
_words = struct.unpack(f"!{len(FILL) // 2}H", FILL)
_prefix = list(itertools.accumulate(_words, initial=0))
FILL_SUM = [_prefix[n // 2] + (FILL[n - 1] << 8 if n % 2 else 0) for n in range(len(FILL) + 1)]
del _words, _prefix


def word_sum(data: bytes) -> int:
    """Sum of the big-endian 16-bit words of data, an odd tail padded with zero."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def fold(total: int) -> int:
    """The Internet checksum of a word sum below 2**32."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_options(mss: int) -> bytes:
    """MSS, SACK permitted and window scale 7: 12 bytes, like Linux without timestamps."""
    return struct.pack("!BBH", 2, 4, mss) + b"\x01\x01\x04\x02\x01\x03\x03\x07"


class Flow:
    """Both directions of one 5-tuple with header bytes and partial checksums precomputed.

    Direction 0 is client to server, 1 server to client. Builders return whole Ethernet frames,
    padded to 60 bytes.
    """

    __slots__ = ("v6", "proto", "eth", "ipsum", "ttlproto", "addrs", "tail", "pseudo", "l4sum", "ports",
                 "ident", "mss", "synopts", "synopts_sum")

    def __init__(self, proto: int, client: bytes, server: bytes, cport: int = 0, sport: int = 0,
                 vlan: int | None = None, ttl: tuple[int, int] = (64, 64), ident: tuple[int, int] = (1, 1)):
        self.v6 = len(client) == 16
        self.proto = proto
        tag = b"" if vlan is None else _VLAN.pack(0x8100, vlan)
        ethertype = b"\x86\xdd" if self.v6 else b"\x08\x00"
        cmac, smac = b"\x02\x00" + client[-4:], b"\x02\x00" + server[-4:]
        self.eth = (smac + cmac + tag + ethertype, cmac + smac + tag + ethertype)
        self.addrs = (client + server, server + client)
        addr_sum = word_sum(client + server)
        self.ttlproto = (ttl[0] << 8 | proto, ttl[1] << 8 | proto)
        self.ipsum = tuple(0x4500 + tp + addr_sum for tp in self.ttlproto)
        self.tail = tuple(bytes((proto, ttl[d])) + self.addrs[d] for d in (0, 1))
        self.pseudo = addr_sum + proto                          # pseudo-header without the length
        self.l4sum = self.pseudo + cport + sport                # ... and both ports
        self.ports = ((cport, sport), (sport, cport))
        self.ident = list(ident)
        self.mss = 1440 if self.v6 else 1460
        self.synopts = syn_options(self.mss)
        self.synopts_sum = word_sum(self.synopts)

    def _ip(self, d: int, l4len: int, frag: int = 0x4000, ident: int | None = None) -> bytes:
        """Ethernet and IP headers for an upper-layer part of l4len bytes from side d."""
        if self.v6:
            return self.eth[d] + _V6.pack(0x60000000, l4len) + self.tail[d]
        if ident is None:
            ident = self.ident[d] = (self.ident[d] + 1) & 0xFFFF
        total = 20 + l4len
        csum = fold(self.ipsum[d] + total + ident + frag)
        return self.eth[d] + _V4.pack(0x4500, total, ident, frag, self.ttlproto[d], csum, self.addrs[d])

    def tcp(self, d: int, flags: int, seq: int, ack: int, plen: int = 0) -> bytes:
        """A TCP segment carrying FILL[:plen]; SYNs carry the usual 12 option bytes."""
        opts, opts_sum = (self.synopts, self.synopts_sum) if flags & SYN else (b"", 0)
        hl = 20 + len(opts)
        seg_len = hl + plen
        offflags = hl << 10 | flags
        csum = fold(self.l4sum + seg_len + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
                    + offflags + WINDOW + opts_sum + FILL_SUM[plen])
        sp, dp = self.ports[d]
        frame = self._ip(d, seg_len) + _TCP.pack(sp, dp, seq, ack, offflags, WINDOW, csum, 0) + opts + FILL[:plen]
        return frame if len(frame) >= MIN_FRAME else frame + _PAD[len(frame):]

    def udp(self, d: int, plen: int = 0, payload: bytes | None = None) -> bytes:
        """A UDP datagram carrying payload, or FILL[:plen]."""
        if payload is None:
            payload, psum = FILL[:plen], FILL_SUM[plen]
        else:
            psum = word_sum(payload)
        length = 8 + len(payload)
        csum = fold(self.l4sum + 2 * length + psum) or 0xFFFF
        sp, dp = self.ports[d]
        frame = self._ip(d, length) + _UDP.pack(sp, dp, length, csum) + payload
        return frame if len(frame) >= MIN_FRAME else frame + _PAD[len(frame):]

    def echo(self, d: int, ident: int, seq: int, size: int = 56) -> bytes:
        """An ICMP (IPv4) or ICMPv6 echo request (d=0) or reply (d=1) with size data bytes."""
        if self.v6:
            kind = 128 + d
            pseudo = self.pseudo + 8 + size
        else:
            kind = 8 if d == 0 else 0
            pseudo = 0
        csum = fold(pseudo + (kind << 8) + ident + seq + FILL_SUM[size])
        frame = self._ip(d, 8 + size) + _ICMP.pack(kind, 0, csum, ident, seq) + FILL[:size]
        return frame if len(frame) >= MIN_FRAME else frame + _PAD[len(frame):]

    def udp_fragments(self, d: int, plen: int, ident: int, mtu: int = 1500) -> list[bytes]:
        """A UDP datagram carrying FILL[:plen], cut into IP fragments of at most mtu bytes."""
        headers = len(self.eth[d]) + (40 if self.v6 else 20)
        datagram = self.udp(d, plen)[headers:]
        room = (mtu - (48 if self.v6 else 20)) // 8 * 8
        frames = []
        for offset in range(0, len(datagram), room):
            piece = datagram[offset:offset + room]
            more = offset + room < len(datagram)
            if self.v6:
                header = self.eth[d] + _V6.pack(0x60000000, 8 + len(piece)) + bytes((44,)) + self.tail[d][1:]
                frame = header + _FRAG6.pack(self.proto, 0, offset | more, ident) + piece
            else:
                frame = self._ip(d, len(piece), frag=(more << 13) | (offset >> 3), ident=ident & 0xFFFF) + piece
            frames.append(frame if len(frame) >= MIN_FRAME else frame + _PAD[len(frame):])
        return frames


def dns_message(txid: int, name: str, response: bool, v6: bool) -> bytes:
    """A DNS query for name, or its response with one A/AAAA answer."""
    qtype = 28 if v6 else 1
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", qtype, 1)
    if not response:
        return struct.pack("!6H", txid, 0x0100, 1, 0, 0, 0) + question
    rdata = bytes(range(16)) if v6 else b"\xc6\x33\x64" + bytes([txid & 0xFF])
    answer = struct.pack("!HHHIH", 0xC00C, qtype, 1, 300, len(rdata)) + rdata
    return struct.pack("!6H", txid, 0x8180, 1, 1, 0, 0) + question + answer


class PcapOut:
    """Classic µs pcap writer that buffers records and writes them in large chunks."""

    def __init__(self, path: str, snaplen: int = SNAPLEN):
        self._f = open(path, "wb")
        self._f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1))
        self.snaplen = snaplen
        self._chunks: list[bytes] = []
        self._size = 0
        self.packets = 0
        self.wire_bytes = 0
        self.last_us = 0

    def add(self, ts_us: int, frame: bytes) -> None:
        """Append one frame."""
        wire = len(frame)
        if wire > self.snaplen:
            frame = frame[:self.snaplen]
        self._chunks.append(_RECORD.pack(ts_us // 1_000_000, ts_us % 1_000_000, len(frame), wire))
        self._chunks.append(frame)
        self._size += 16 + len(frame)
        self.packets += 1
        self.wire_bytes += wire
        self.last_us = ts_us
        if self._size >= 1 << 23:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered records."""
        self._f.write(b"".join(self._chunks))
        self._chunks.clear()
        self._size = 0

    def close(self) -> None:
        """Flush and close the file."""
        self._flush()
        self._f.close()


class Hosts:
    """Address pools: IPv4 and IPv6 clients and servers, as packed bytes."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.clients4 = [bytes((10, 1 + i // 65536 % 250, i // 256 % 256, i % 256)) for i in range(1, 6001)]
        self.servers4 = [bytes((198, 18 + i // 65536, i // 256 % 256, i % 256)) for i in range(1, 1201)]
        self.clients6 = [bytes.fromhex("20010db8000c0000") + i.to_bytes(8, "big") for i in range(1, 601)]
        self.servers6 = [bytes.fromhex("20010db800050000") + i.to_bytes(8, "big") for i in range(1, 201)]

    def pair(self, v6: bool) -> tuple[bytes, bytes]:
        """A random client and server."""
        if v6:
            return self.rng.choice(self.clients6), self.rng.choice(self.servers6)
        return self.rng.choice(self.clients4), self.rng.choice(self.servers4)


# --- the benchmark mix --------------------------------------------------------------------------

# kind: share of sessions. TCP kinds with data take the packets left over after the fixed kinds.
MIX = {
    "tcp_fin": 0.44, "tcp_rst": 0.09, "tcp_open": 0.035, "tcp_syn": 0.04, "tcp_rej": 0.03,
    "dns": 0.22, "udp_rr": 0.06, "udp_oneway": 0.045, "icmp": 0.03, "udp_frag": 0.01,
}
ELASTIC = {"tcp_fin": 3, "tcp_rst": 1, "tcp_open": 0}     # teardown packets after handshake + data
IPV6_SHARE, VLAN_SHARE = 0.08, 0.10
VLANS = (10, 20, 30, 100, 200)
TCP_PORTS = ((443, 60), (80, 20), (22, 4), (25, 3), (8080, 4), (3306, 3), (993, 3), (5432, 3))
NAMES = ("example.com", "www.example.org", "api.example.net", "cdn.example.com", "mail.example.org",
         "time.example.net", "login.example.com", "static.example.net", "updates.example.org")
ARRIVALS_PER_S = 1200        # new sessions per second; sessions last ~2.5 s, so ~3,000 are open at once


def plan_sessions(rng: random.Random, packets: int, sessions: int) -> list[list]:
    """[kind, param, data_packets] per session, with exactly ``packets`` packets in total.

    param: SYN retransmissions, request/response pairs, one-way packets, pings (negative: no
    replies) or the fragmented response size; data_packets: TCP data-phase packets (≥ 2).
    """
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=sessions)
    plan, fixed, elastic = [], 0, []
    for kind in kinds:
        param, data = 0, 0
        if kind in ELASTIC:
            data = 2
            count = 3 + data + ELASTIC[kind]
            elastic.append(len(plan))
        elif kind == "tcp_syn":
            param = rng.choice((0, 0, 0, 1, 2))
            count = 1 + param
        elif kind == "tcp_rej":
            count = 2
        elif kind == "dns":
            param = 1 if rng.random() < 0.95 else 0                # answered or not
            count = 1 + param
        elif kind == "udp_rr":
            param = rng.randint(1, 4)
            count = 2 * param
        elif kind == "udp_oneway":
            param = rng.randint(1, 12)
            count = param
        elif kind == "icmp":
            pings = rng.randint(1, 8)
            param = pings if rng.random() < 0.9 else -pings
            count = 2 * pings if param > 0 else pings
        else:                                                       # udp_frag: request + fragments
            fragments = rng.randint(2, 6)
            # a size that makes `fragments` fragments both over IPv4 (1480 a piece) and IPv6 (1448)
            param = rng.randint((fragments - 1) * 1480 + 1, fragments * 1448) - 8
            count = 1 + fragments
        plan.append([kind, param, data])
        fixed += count
    if packets < fixed:
        raise ValueError(f"{sessions} sessions need at least {fixed} packets, not {packets}")
    spread(rng, packets - fixed, [plan[i] for i in elastic])
    return plan


def spread(rng: random.Random, extra: int, entries: list[list]) -> None:
    """Give ``extra`` data packets to TCP sessions, heavy-tailed (a few bulk transfers, many small)."""
    if not entries:
        raise ValueError("no TCP session to carry the remaining packets")
    weights = [min(rng.paretovariate(1.3), 2000.0) for _ in entries]
    total = sum(weights)
    given = 0
    for entry, w in zip(entries, weights):
        share = int(extra * w / total)
        entry[2] += share
        given += share
    for entry in rng.choices(entries, k=extra - given):
        entry[2] += 1


class Mix:
    """Builds each planned session's frames with timestamps; keeps 5-tuples distinct."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.hosts = Hosts(rng)
        self.used: set[tuple] = set()
        self.port_choices = [p for p, _ in TCP_PORTS]
        self.port_weights = [w for _, w in TCP_PORTS]

    def flow(self, proto: int, sport: int, *, cport: int | None = None, v6: bool | None = None) -> Flow:
        """A flow between fresh endpoints whose 5-tuple no earlier session used."""
        rng = self.rng
        if v6 is None:
            v6 = rng.random() < IPV6_SHARE
        vlan = rng.choice(VLANS) if rng.random() < VLAN_SHARE else None
        while True:
            client, server = self.hosts.pair(v6)
            port = rng.randint(32768, 60999) if cport is None else cport
            key = (proto, client, server, port, sport)
            if key not in self.used:
                self.used.add(key)
                break
            cport = None                                 # an ICMP id clash: draw a port-like id
        ttl = (rng.choice((64, 64, 128)), rng.randint(44, 60))
        return Flow(proto, client, server, port, sport, vlan, ttl, (rng.getrandbits(16), rng.getrandbits(16)))

    def build(self, start_us: int, kind: str, param: int, data: int) -> list[tuple[int, bytes]]:
        """(ts_us, frame) of one session, in time order, starting at start_us."""
        if kind.startswith("tcp"):
            return self.tcp(start_us, kind, param, data)
        return getattr(self, kind)(start_us, param)

    def tcp(self, t: int, kind: str, retries: int, data: int) -> list[tuple[int, bytes]]:
        """Handshake, request and response segments (the client ACKs every second one), teardown."""
        rng = self.rng
        sport = rng.choices(self.port_choices, self.port_weights)[0]
        if kind == "tcp_rej":
            sport = rng.choice((23, 81, 135, 139, 445, 8443))
        f = self.flow(TCP, sport)
        rtt = rng.randint(300, 80_000)
        c, s = rng.getrandbits(32), rng.getrandbits(32)      # next sequence number of each side
        out = [(t, f.tcp(0, SYN, c, 0))]
        if kind == "tcp_syn":
            for i in range(retries):
                out.append((t + 1_000_000 * (2 ** (i + 1) - 1), f.tcp(0, SYN, c, 0)))
            return out
        c = (c + 1) & 0xFFFFFFFF
        if kind == "tcp_rej":
            return out + [(t + rtt, f.tcp(1, RST | ACK, 0, c))]
        out.append((t + rtt, f.tcp(1, SYN | ACK, s, c)))
        s = (s + 1) & 0xFFFFFFFF
        t += rtt + 20 + rtt // 100
        out.append((t, f.tcp(0, ACK, c, s)))
        request = rng.randint(60, 700)
        t += 50
        out.append((t, f.tcp(0, PSH | ACK, c, s, request)))
        c = (c + request) & 0xFFFFFFFF
        duration = min(25_000_000, int(rng.expovariate(1 / 3_000_000)) + 200 * data)
        times = sorted(rng.randrange(duration) for _ in range(data - 1))
        servers = data - 1 - (data - 1) // 3                       # pattern: server, server, client ACK
        sent = 0
        for j, dt in enumerate(times, 1):
            when = t + rtt + dt + j                                # + j keeps them strictly increasing
            if j % 3:
                sent += 1
                last = sent == servers
                plen = rng.randint(1, f.mss) if last else f.mss
                out.append((when, f.tcp(1, (PSH | ACK) if last else ACK, s, c, plen)))
                s = (s + plen) & 0xFFFFFFFF
            else:
                out.append((when, f.tcp(0, ACK, c, s)))
        t = out[-1][0]
        if kind == "tcp_open":
            return out
        t += int(rng.expovariate(1 / 500_000)) + 1
        if kind == "tcp_rst":
            side = 1 if rng.random() < 0.7 else 0
            seq, ack = (s, c) if side else (c, s)
            return out + [(t, f.tcp(side, RST | ACK, seq, ack))]
        out.append((t, f.tcp(0, FIN | ACK, c, s)))
        c = (c + 1) & 0xFFFFFFFF
        out.append((t + rtt, f.tcp(1, FIN | ACK, s, c)))
        s = (s + 1) & 0xFFFFFFFF
        return out + [(t + rtt + 30, f.tcp(0, ACK, c, s))]

    def dns(self, t: int, answered: int) -> list[tuple[int, bytes]]:
        """A query to port 53 and, usually, its response with the same transaction id."""
        rng = self.rng
        f = self.flow(UDP, 53)
        txid, name = rng.getrandbits(16), rng.choice(NAMES)
        out = [(t, f.udp(0, payload=dns_message(txid, name, False, f.v6)))]
        if answered:
            out.append((t + rng.randint(300, 60_000), f.udp(1, payload=dns_message(txid, name, True, f.v6))))
        return out

    def udp_rr(self, t: int, pairs: int) -> list[tuple[int, bytes]]:
        """Request/response pairs: NTP, QUIC-sized or small application datagrams."""
        rng = self.rng
        sport = rng.choice((123, 443, 5353, 1900, 3478, 27015))
        f = self.flow(UDP, sport)
        sizes = {123: (48, 48), 443: (1200, 1250)}.get(sport, (rng.randint(20, 400), rng.randint(20, 900)))
        rtt = rng.randint(300, 60_000)
        out = []
        for _ in range(pairs):
            out.append((t, f.udp(0, sizes[0])))
            out.append((t + rtt, f.udp(1, sizes[1])))
            t += rtt + rng.randint(200_000, 3_000_000)
        return out

    def udp_oneway(self, t: int, count: int) -> list[tuple[int, bytes]]:
        """A one-way stream (syslog, NetFlow export, …)."""
        rng = self.rng
        f = self.flow(UDP, rng.choice((514, 2055, 4739, 6343, 8125)))
        out = []
        for _ in range(count):
            out.append((t, f.udp(0, rng.randint(40, 400))))
            t += rng.randint(100_000, 4_000_000)
        return out

    def icmp(self, t: int, pings: int) -> list[tuple[int, bytes]]:
        """Echo requests a second apart, answered unless pings < 0."""
        rng = self.rng
        v6 = rng.random() < IPV6_SHARE
        f = self.flow(ICMPV6 if v6 else ICMP, 0, cport=rng.getrandbits(16), v6=v6)
        ident, seq0, rtt = f.ports[0][0], rng.randint(1, 100), rng.randint(300, 80_000)
        out = []
        for i in range(abs(pings)):
            out.append((t, f.echo(0, ident, seq0 + i)))
            if pings > 0:
                out.append((t + rtt, f.echo(1, ident, seq0 + i)))
            t += 1_000_000 + rng.randint(0, 2000)
        return out

    def udp_frag(self, t: int, size: int) -> list[tuple[int, bytes]]:
        """A small request answered by a datagram of size bytes in IP fragments."""
        rng = self.rng
        f = self.flow(UDP, rng.choice((2049, 7001, 4000)))
        out = [(t, f.udp(0, rng.randint(40, 160)))]
        t += rng.randint(300, 30_000)
        for i, frame in enumerate(f.udp_fragments(1, size, rng.getrandbits(32))):
            out.append((t + 20 * i, frame))
        return out


def generate_bench(path: str, packets: int = 2_000_000, sessions: int = 200_000, seed: int = 1,
                   snaplen: int = SNAPLEN) -> dict:
    """Write the benchmark mix to path; returns what was written (packets, sessions, span, concurrency)."""
    rng = random.Random(seed)
    plan = plan_sessions(rng, packets, sessions)
    mix = Mix(rng)
    heap: list[tuple[int, int, bytes]] = []
    ends: list[int] = []
    tiebreak = itertools.count()
    kinds = dict.fromkeys(MIX, 0)
    out = PcapOut(path, snaplen)
    start, peak, open_sum = float(T0_US), 0, 0
    for kind, param, data in plan:
        start += rng.expovariate(ARRIVALS_PER_S) * 1e6
        now = int(start)
        while heap and heap[0][0] <= now:
            ts, _, frame = heapq.heappop(heap)
            out.add(ts, frame)
        frames = mix.build(now, kind, param, data)
        for ts, frame in frames:
            heapq.heappush(heap, (ts, next(tiebreak), frame))
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        heapq.heappush(ends, frames[-1][0])
        peak = max(peak, len(ends))
        open_sum += len(ends)
        kinds[kind] += 1
    while heap:
        ts, _, frame = heapq.heappop(heap)
        out.add(ts, frame)
    out.close()
    if out.packets != packets:
        raise AssertionError(f"wrote {out.packets} packets, planned {packets}")
    return {"packets": out.packets, "sessions": sessions, "wire_bytes": out.wire_bytes,
            "span_s": (out.last_us - T0_US) / 1e6, "concurrent_peak": peak,
            "concurrent_mean": round(open_sum / sessions), "kinds": kinds}


# --- distinct sessions (eviction) ----------------------------------------------------------------

def distinct_frames(sessions: int, span_s: float) -> Iterator[tuple[int, bytes]]:
    """Frames of ``sessions`` two-packet sessions with distinct 5-tuples, starts evenly over span_s."""
    step = span_s * 1e6 / sessions
    pending: list[tuple[int, int, bytes]] = []
    for i in range(sessions):
        now = T0_US + int(i * step)
        while pending and pending[0][0] <= now:
            ts, _, frame = heapq.heappop(pending)
            yield ts, frame
        host = 1 + i // 3_000                                   # 3,000 client ports per host
        client = bytes((10, 128 | (host >> 16 & 0x0F), host >> 8 & 0xFF, host & 0xFF))
        server = bytes((198, 19, i % 200, 1 + i % 250))
        cport = 1024 + i % 3_000
        if i % 4 == 3:
            f = Flow(TCP, client, server, cport, 80 + i % 2)
            yield now, f.tcp(0, SYN, 1000, 0)
            heapq.heappush(pending, (now + 150, i, f.tcp(1, RST | ACK, 0, 1001)))
        else:
            f = Flow(UDP, client, server, cport, 5000 + i % 16)
            yield now, f.udp(0, 32)
            heapq.heappush(pending, (now + 100, i, f.udp(1, 64)))
    while pending:
        ts, _, frame = heapq.heappop(pending)
        yield ts, frame


def generate_distinct(path: str, sessions: int = 1_000_000, span_s: float = 10.0,
                      extra: Iterable[tuple[int, bytes]] = (), snaplen: int = SNAPLEN) -> dict:
    """Write ``sessions`` distinct short sessions, merged in time with extra (ts_us, frame) packets.

    The sessions use 10.128.0.0/12 → 198.19.0.0/16; keep extra packets outside those nets and
    within [T0, T0 + span_s].
    """
    extra = sorted(extra, key=lambda p: p[0])
    out = PcapOut(path, snaplen)
    for ts, frame in heapq.merge(distinct_frames(sessions, span_s), extra, key=lambda p: p[0]):
        out.add(ts, frame)
    out.close()
    return {"packets": out.packets, "sessions": sessions, "extra_packets": len(extra),
            "wire_bytes": out.wire_bytes, "span_s": (out.last_us - T0_US) / 1e6}


def main(argv: list[str] | None = None) -> int:
    """Command line: write one of the two captures and say what is in it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Example: python bench/gen_capture.py --packets 2000000 "
                                            "--sessions 200000 -o bench/out/bench-2m.pcap")
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--distinct-sessions", type=int, metavar="N",
                        help="write N distinct two-packet sessions instead of the benchmark mix")
    parser.add_argument("--span", type=float, default=10.0, help="seconds the distinct sessions span")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--snaplen", type=int, default=SNAPLEN)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        if args.distinct_sessions:
            stats = generate_distinct(args.output, args.distinct_sessions, args.span, snaplen=args.snaplen)
        else:
            stats = generate_bench(args.output, args.packets, args.sessions, args.seed, args.snaplen)
    except ValueError as e:
        print(f"gen_capture: {e}", file=sys.stderr)
        return 2
    stats["seconds"] = round(time.perf_counter() - began, 1)
    print(" ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
