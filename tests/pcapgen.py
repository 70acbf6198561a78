"""Craft real captures for tests: frame builders, session helpers with ground truth, a pcap writer.

Standard library only. Everything is deterministic: no clock, no unseeded randomness.

Layers, bottom up:

* header builders return bytes with correct lengths and checksums: ``ethernet``, ``ipv4``, ``ipv6``
  (extension headers from ``hop_by_hop``, ``dest_options``, ``routing``, ``fragment_header``), ``tcp``,
  ``udp``, ``icmp_echo``, ``icmp_unreachable``, ``icmpv6_echo``, ``arp``; each takes overrides for the
  fields a malformed-packet test wants to break;
* ``frame`` puts an IP packet into Ethernet (802.1Q tags, padding to 60 bytes like a NIC, or not);
* session helpers (``tcp_session``, ``udp_exchange``, ``ping``, ``fragmented_udp``) return a
  ``Session``: the timestamped frames plus a ``Truth`` in Argus column names (``s*`` = the client);
* ``merge`` interleaves sessions by time and ``write_pcap``/``PcapWriter`` write classic pcap.

Example::

    s = tcp_session("10.0.0.1", "198.18.0.1", 40000, 80, [300], [5000], close="fin")
    write_pcap(tmp_path / "x.pcap", s.packets)
    assert s.truth.dbytes == sum(len(p.data) for p in s.packets if p.data[6:12] == mac_for("198.18.0.1"))
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import struct
from typing import BinaryIO, Iterable, NamedTuple, Sequence

ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
EXT_HOPOPTS, EXT_ROUTING, EXT_FRAGMENT, EXT_DSTOPTS = 0, 43, 44, 60
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO = 0, 3, 8
ICMPV6_ECHO, ICMPV6_ECHO_REPLY = 128, 129
LINKTYPE_ETHERNET, LINKTYPE_RAW = 1, 101
MIN_FRAME = 60                 # shortest Ethernet frame without FCS: NICs pad up to it
T0 = 1_700_000_000.0           # default start time of every session (2023-11-14T22:13:20Z)
BROADCAST = b"\xff" * 6

_PCAP_MAGIC_US = 0xA1B2C3D4


class Packet(NamedTuple):
    """One captured frame: time in integer microseconds since the epoch, and the bytes."""

    ts_us: int
    data: bytes


@dataclasses.dataclass
class Truth:
    """What a session put on the wire, in Argus column names; ``s*`` is the client, ``d*`` the server.

    ``sbytes``/``dbytes`` are frame lengths (pcap orig_len: Ethernet header, VLAN tags and padding
    included). ``sappbytes``/``dappbytes`` are TCP/UDP payload bytes and, for ICMP, the whole ICMP
    message (Argus -A). A fragmented datagram counts its whole payload here; Argus only counts the
    first fragment's share (ARGUS_SEMANTICS.md §1). For ICMP, ``sport`` is the request type and
    ``dport`` the echo identifier.
    """

    proto: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    stime_us: int = 0
    ltime_us: int = 0
    spkts: int = 0
    dpkts: int = 0
    sbytes: int = 0
    dbytes: int = 0
    sappbytes: int = 0
    dappbytes: int = 0

    @property
    def pkts(self) -> int:
        """Packets in both directions."""
        return self.spkts + self.dpkts

    @property
    def bytes(self) -> int:
        """Wire bytes in both directions."""
        return self.sbytes + self.dbytes

    def counters(self) -> dict[str, int]:
        """The six per-direction counters, keyed like the record columns."""
        names = ("spkts", "dpkts", "sbytes", "dbytes", "sappbytes", "dappbytes")
        return {name: getattr(self, name) for name in names}

    def count(self, from_client: bool, ts_us: int, wire: int, app: int) -> None:
        """Account one frame sent by the client (True) or the server (False)."""
        if self.spkts + self.dpkts == 0:
            self.stime_us = ts_us
        self.ltime_us = ts_us
        if from_client:
            self.spkts += 1
            self.sbytes += wire
            self.sappbytes += app
        else:
            self.dpkts += 1
            self.dbytes += wire
            self.dappbytes += app


class Session(NamedTuple):
    """A session helper's result: frames in time order and their ground truth."""

    packets: list[Packet]
    truth: Truth


class Ext(NamedTuple):
    """One IPv6 extension header: its type and its bytes after the Next Header octet."""

    kind: int
    body: bytes


# --- addresses and checksums -------------------------------------------------------------------

def ip(addr) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address given as text or as an ipaddress object."""
    return ipaddress.ip_address(addr)


def is_v6(addr) -> bool:
    """True for an IPv6 address."""
    return ip(addr).version == 6


def mac_for(addr) -> bytes:
    """A locally administered MAC derived from an IP address (02:00 + its last four bytes)."""
    return b"\x02\x00" + ip(addr).packed[-4:]


def mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff``."""
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data, odd length padded with a zero byte."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src, dst, proto: int, length: int) -> bytes:
    """The IPv4 or IPv6 pseudo-header that TCP, UDP and ICMPv6 checksums cover."""
    s, d = ip(src), ip(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, proto)


def _l4_checksum(src, dst, proto: int, segment: bytes) -> int:
    """Checksum of a TCP/UDP/ICMPv6 segment whose checksum field is zero."""
    return checksum(pseudo_header(src, dst, proto, len(segment)) + segment)


def filler(n: int, seed: int = 0) -> bytes:
    """n deterministic printable payload bytes."""
    pattern = b"flowtap-pcapgen-%d " % seed
    return (pattern * (n // len(pattern) + 1))[:n]


def _payload(item: bytes | int) -> bytes:
    """A payload given as bytes or as a length."""
    return filler(item) if isinstance(item, int) else bytes(item)


# --- link layer ---------------------------------------------------------------------------------

def ethernet(payload: bytes, ethertype: int, src: bytes = b"\x02\0\0\0\0\1", dst: bytes = b"\x02\0\0\0\0\2",
             vlans: Sequence[int] = (), pad: bool = True, pcp: int = 0, outer_tpid: int = ETH_QINQ) -> bytes:
    """An Ethernet II frame; ``vlans`` outermost first (outer tags ``outer_tpid``, the inner 802.1Q); padded to 60.

    Argus 3.0.8 does not decode 802.1ad (0x88a8) outer tags; pass ``outer_tpid=ETH_VLAN`` for 0x8100 stacks.
    """
    header = bytearray(dst + src)
    for i, vid in enumerate(vlans):
        tpid = outer_tpid if i < len(vlans) - 1 else ETH_VLAN
        header += struct.pack("!HH", tpid, (pcp << 13) | (vid & 0x0FFF))
    frame = bytes(header) + struct.pack("!H", ethertype) + payload
    if pad and len(frame) < MIN_FRAME:
        frame += bytes(MIN_FRAME - len(frame))
    return frame


def arp(op: int, sender_mac: bytes, sender_ip, target_mac: bytes, target_ip) -> bytes:
    """An ARP packet for IPv4 over Ethernet (op 1 request, 2 reply)."""
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, op, sender_mac, ip(sender_ip).packed,
                       target_mac, ip(target_ip).packed)


def arp_frame(op: int, sender_ip, target_ip, pad: bool = True) -> bytes:
    """A whole ARP frame: a broadcast request, or a unicast reply from target to sender."""
    smac = mac_for(sender_ip)
    if op == 1:
        return ethernet(arp(1, smac, sender_ip, bytes(6), target_ip), ETH_ARP, smac, BROADCAST, pad=pad)
    return ethernet(arp(2, smac, sender_ip, mac_for(target_ip), target_ip), ETH_ARP, smac,
                    mac_for(target_ip), pad=pad)


# --- network layer ------------------------------------------------------------------------------

def ipv4(src, dst, proto: int, payload: bytes, *, ttl: int = 64, tos: int = 0, ident: int = 0,
         df: bool = True, mf: bool = False, frag_offset: int = 0, options: bytes = b"",
         total_length: int | None = None, ihl: int | None = None, csum: int | None = None) -> bytes:
    """An IPv4 packet; ``frag_offset`` is in bytes (a multiple of 8); overrides break the header on purpose."""
    if len(options) % 4:
        options += bytes(4 - len(options) % 4)
    header_len = 20 + len(options)
    if ihl is None:
        ihl = header_len // 4
    if total_length is None:
        total_length = header_len + len(payload)
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset // 8)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, total_length, ident, flags, ttl, proto, 0,
                         ip(src).packed, ip(dst).packed) + options
    if csum is None:
        csum = checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def ipv6(src, dst, next_header: int, payload: bytes, *, hop_limit: int = 64, tclass: int = 0,
         flow_label: int = 0, extensions: Sequence[Ext] = (), payload_length: int | None = None) -> bytes:
    """An IPv6 packet; ``extensions`` are chained in order before the upper-layer payload."""
    chain = b""
    for i, ext in enumerate(extensions):
        following = extensions[i + 1].kind if i + 1 < len(extensions) else next_header
        chain += bytes([following]) + ext.body
    first = extensions[0].kind if extensions else next_header
    body = chain + payload
    if payload_length is None:
        payload_length = len(body)
    word = (6 << 28) | (tclass << 20) | (flow_label & 0xFFFFF)
    return struct.pack("!IHBB16s16s", word, payload_length, first, hop_limit, ip(src).packed,
                       ip(dst).packed) + body


def _options_ext(kind: int, options: bytes) -> Ext:
    """A hop-by-hop or destination options header, padded to 8n bytes with Pad1/PadN."""
    missing = -(2 + len(options)) % 8
    if missing == 1:
        options += b"\0"
    elif missing:
        options += bytes([1, missing - 2]) + bytes(missing - 2)
    return Ext(kind, bytes([(2 + len(options)) // 8 - 1]) + options)


def hop_by_hop(options: bytes = b"") -> Ext:
    """An IPv6 hop-by-hop options header (``options`` are raw TLVs; padding is added)."""
    return _options_ext(EXT_HOPOPTS, options)


def dest_options(options: bytes = b"") -> Ext:
    """An IPv6 destination options header (``options`` are raw TLVs; padding is added)."""
    return _options_ext(EXT_DSTOPTS, options)


def routing(addresses: Sequence = (), routing_type: int = 0, segments_left: int = 0) -> Ext:
    """An IPv6 routing header listing ``addresses``."""
    body = struct.pack("!BBB4x", 2 * len(addresses), routing_type, segments_left)
    return Ext(EXT_ROUTING, body + b"".join(ip(a).packed for a in addresses))


def fragment_header(offset: int, more: bool, ident: int) -> Ext:
    """An IPv6 fragment header; ``offset`` in bytes (a multiple of 8)."""
    return Ext(EXT_FRAGMENT, struct.pack("!BHI", 0, (offset & ~7) | int(more), ident))


def ip_packet(src, dst, proto: int, payload: bytes, **kw) -> bytes:
    """An IPv4 or IPv6 packet, by the address family; ``ttl`` also names the IPv6 hop limit."""
    if is_v6(src):
        if "ttl" in kw:
            kw["hop_limit"] = kw.pop("ttl")
        if "tos" in kw:
            kw["tclass"] = kw.pop("tos")
        return ipv6(src, dst, proto, payload, **kw)
    return ipv4(src, dst, proto, payload, **kw)


def fragment(src, dst, proto: int, segment: bytes, mtu: int = 1500, ident: int = 1, **kw) -> list[bytes]:
    """Split an upper-layer segment into IP fragments no longer than ``mtu``, first fragment first."""
    v6 = is_v6(src)
    room = (mtu - (48 if v6 else 20)) // 8 * 8
    pieces = [segment[i:i + room] for i in range(0, len(segment), room)] or [b""]
    packets = []
    for i, piece in enumerate(pieces):
        more, offset = i < len(pieces) - 1, i * room
        if v6:
            packets.append(ip_packet(src, dst, proto, piece, extensions=[fragment_header(offset, more, ident)], **kw))
        else:
            packets.append(ipv4(src, dst, proto, piece, ident=ident, df=False, mf=more, frag_offset=offset, **kw))
    return packets


# --- transport layer ----------------------------------------------------------------------------

def syn_options(mss: int = 1460, wscale: int = 7, sack: bool = True) -> bytes:
    """Typical SYN options: MSS, SACK permitted, window scale (12 bytes)."""
    opts = struct.pack("!BBH", 2, 4, mss)
    if sack:
        opts += b"\x01\x01\x04\x02"
    if wscale is not None:
        opts += b"\x01" + struct.pack("!BBB", 3, 3, wscale)
    return opts


def tcp(src, dst, sport: int, dport: int, *, seq: int = 0, ack: int = 0, flags: int = ACK, payload: bytes = b"",
        window: int = 64240, options: bytes = b"", urgent: int = 0, data_offset: int | None = None,
        csum: int | None = None) -> bytes:
    """A TCP segment with its checksum over the pseudo-header of src/dst; options padded with EOL to 4n."""
    if len(options) % 4:
        options += bytes(4 - len(options) % 4)
    if data_offset is None:
        data_offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, data_offset << 4,
                         flags, window, 0, urgent) + options
    segment = header + payload
    if csum is None:
        csum = _l4_checksum(src, dst, PROTO_TCP, segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def udp(src, dst, sport: int, dport: int, payload: bytes, *, length: int | None = None,
        csum: int | None = None) -> bytes:
    """A UDP datagram with its checksum (a computed 0 is sent as 0xffff)."""
    if length is None:
        length = 8 + len(payload)
    segment = struct.pack("!HHHH", sport, dport, length, 0) + payload
    if csum is None:
        csum = _l4_checksum(src, dst, PROTO_UDP, segment) or 0xFFFF
    return segment[:6] + struct.pack("!H", csum) + segment[8:]


def icmp(icmp_type: int, code: int, rest: bytes, body: bytes = b"") -> bytes:
    """An ICMPv4 message: type, code, the 4 header bytes after the checksum, then the body."""
    message = struct.pack("!BBH", icmp_type, code, 0) + rest + body
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


def icmp_echo(ident: int, seq: int, payload: bytes = b"", reply: bool = False) -> bytes:
    """An ICMPv4 echo request or reply."""
    return icmp(ICMP_ECHO_REPLY if reply else ICMP_ECHO, 0, struct.pack("!HH", ident, seq), payload)


def icmp_unreachable(original: bytes, code: int = 3) -> bytes:
    """An ICMPv4 destination unreachable (code 3: port) quoting the original IP header + 8 bytes."""
    quoted = original[:(original[0] & 0x0F) * 4 + 8]
    return icmp(ICMP_UNREACH, code, bytes(4), quoted)


def icmpv6_echo(src, dst, ident: int, seq: int, payload: bytes = b"", reply: bool = False) -> bytes:
    """An ICMPv6 echo request or reply with its pseudo-header checksum."""
    message = struct.pack("!BBHHH", ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO, 0, 0, ident, seq) + payload
    csum = _l4_checksum(src, dst, PROTO_ICMPV6, message)
    return message[:2] + struct.pack("!H", csum) + message[4:]


def dns_query(txid: int, name: str = "example.com", qtype: int = 1) -> bytes:
    """A DNS query message with one question (class IN, recursion desired)."""
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + _dns_question(name, qtype)


def dns_response(txid: int, name: str = "example.com", address: str = "192.0.2.1", ttl: int = 300) -> bytes:
    """A DNS response with one A (or AAAA, for an IPv6 address) answer to ``dns_query(txid, name)``."""
    addr = ip(address)
    qtype = 28 if addr.version == 6 else 1
    answer = struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, len(addr.packed)) + addr.packed
    return struct.pack("!HHHHHH", txid, 0x8180, 1, 1, 0, 0) + _dns_question(name, qtype) + answer


def _dns_question(name: str, qtype: int) -> bytes:
    """A DNS question section entry."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".") if part)
    return labels + b"\0" + struct.pack("!HH", qtype, 1)


# --- frames and sessions ------------------------------------------------------------------------

def frame(src, dst, proto: int, segment: bytes, *, vlan: int | Sequence[int] | None = None, pad: bool = True,
          src_mac: bytes | None = None, dst_mac: bytes | None = None, **ip_kw) -> bytes:
    """segment in an IP packet in an Ethernet frame between the MACs derived from src and dst."""
    return l2(ip_packet(src, dst, proto, segment, **ip_kw), src, dst, vlan=vlan, pad=pad,
              src_mac=src_mac, dst_mac=dst_mac)


def l2(packet: bytes, src, dst, *, vlan: int | Sequence[int] | None = None, pad: bool = True,
       src_mac: bytes | None = None, dst_mac: bytes | None = None) -> bytes:
    """An IP packet in an Ethernet frame between the MACs derived from src and dst."""
    ethertype = ETH_IPV6 if (packet[0] >> 4) == 6 else ETH_IPV4
    return ethernet(packet, ethertype, src_mac or mac_for(src), dst_mac or mac_for(dst), _vlans(vlan), pad)


def _vlans(vlan: int | Sequence[int] | None) -> tuple[int, ...]:
    """A VLAN argument (None, one id, or ids outermost first) as a tuple."""
    if vlan is None:
        return ()
    return (vlan,) if isinstance(vlan, int) else tuple(vlan)


def _us(seconds: float) -> int:
    """Seconds as integer microseconds."""
    return round(seconds * 1_000_000)


class _Recorder:
    """Appends frames of one session with a running clock and keeps its truth."""

    def __init__(self, truth: Truth, start: float, vlan, pad: bool, ttl: tuple[int, int]):
        self.truth, self.now, self.vlan, self.pad, self.ttl = truth, _us(start), vlan, pad, ttl
        self.packets: list[Packet] = []

    def wait(self, seconds: float) -> None:
        """Advance the clock."""
        self.now += _us(seconds)

    def send(self, from_client: bool, proto: int, segment: bytes, app: int, **ip_kw) -> bytes:
        """Frame segment from one side, record it at the current time, and return the frame."""
        t = self.truth
        src, dst = (t.saddr, t.daddr) if from_client else (t.daddr, t.saddr)
        ip_kw.setdefault("ttl", self.ttl[0 if from_client else 1])
        data = frame(src, dst, proto, segment, vlan=self.vlan, pad=self.pad, **ip_kw)
        self.emit(from_client, data, app)
        return data

    def emit(self, from_client: bool, data: bytes, app: int) -> None:
        """Record an already built frame at the current time."""
        self.packets.append(Packet(self.now, data))
        self.truth.count(from_client, self.now, len(data), app)

    def session(self) -> Session:
        """The finished session."""
        return Session(self.packets, self.truth)


def tcp_session(client, server, cport: int = 40000, sport: int = 80, c2s_payloads: Sequence[bytes | int] = (),
                s2c_payloads: Sequence[bytes | int] = (), *, close: str = "fin", mss: int | None = None,
                start: float = T0, gap: float = 0.001, think: float = 0.0, isn: tuple[int, int] = (1000, 5000),
                window: int = 64240, vlan: int | Sequence[int] | None = None, pad: bool = True,
                ttl: tuple[int, int] = (64, 64), options: bytes | None = None) -> Session:
    """A TCP connection: handshake, request/response rounds, then a close.

    Round i sends ``c2s_payloads[i]`` then ``s2c_payloads[i]`` (bytes, or an int length of filler),
    each cut into ``mss``-sized segments (default 1460, IPv6 1440) with PSH on the last; the peer ACKs
    each burst. ``close``:
    ``fin`` (client FIN, server FIN, client ACK), ``rst`` (server RST|ACK after the data), ``none``
    (left open), ``synonly`` (one SYN, nothing else) or ``rstsyn`` (SYN answered by RST|ACK: port
    closed). Packets are ``gap`` seconds apart, plus ``think`` seconds before each round after the first.
    """
    if close not in ("fin", "rst", "none", "synonly", "rstsyn"):
        raise ValueError(f"close must be fin, rst, none, synonly or rstsyn, not {close!r}")
    rec = _Recorder(Truth(PROTO_TCP, str(ip(client)), cport, str(ip(server)), sport), start, vlan, pad, ttl)
    if mss is None:
        mss = 1440 if is_v6(client) else 1460
    syn_opts = syn_options(mss) if options is None else options
    c_seq, s_seq = isn[0], isn[1]

    def seg(from_client: bool, flags: int, payload: bytes = b"", opts: bytes = b"") -> None:
        nonlocal c_seq, s_seq
        t = rec.truth
        src, dst, sp, dp = (t.saddr, t.daddr, cport, sport) if from_client else (t.daddr, t.saddr, sport, cport)
        seq, ack = (c_seq, s_seq) if from_client else (s_seq, c_seq)
        segment = tcp(src, dst, sp, dp, seq=seq, ack=ack if flags & ACK else 0, flags=flags, payload=payload,
                      window=window, options=opts)
        rec.send(from_client, PROTO_TCP, segment, len(payload))
        rec.wait(gap)
        advance = len(payload) + (1 if flags & (SYN | FIN) else 0)
        if from_client:
            c_seq += advance
        else:
            s_seq += advance

    def burst(from_client: bool, payload: bytes) -> None:
        for i in range(0, len(payload), mss):
            last = i + mss >= len(payload)
            seg(from_client, ACK | (PSH if last else 0), payload[i:i + mss])

    seg(True, SYN, opts=syn_opts)
    if close == "synonly":
        return rec.session()
    if close == "rstsyn":
        seg(False, RST | ACK)
        return rec.session()
    seg(False, SYN | ACK, opts=syn_opts)
    seg(True, ACK)
    for i in range(max(len(c2s_payloads), len(s2c_payloads))):
        if i and think:
            rec.wait(think)
        request = _payload(c2s_payloads[i]) if i < len(c2s_payloads) else b""
        response = _payload(s2c_payloads[i]) if i < len(s2c_payloads) else b""
        burst(True, request)
        if request and not response:
            seg(False, ACK)
        burst(False, response)
        if response:
            seg(True, ACK)
    if close == "fin":
        seg(True, FIN | ACK)
        seg(False, FIN | ACK)
        seg(True, ACK)
    elif close == "rst":
        seg(False, RST | ACK)
    return rec.session()


def udp_exchange(client, server, cport: int = 40000, sport: int = 5353, requests: Sequence[bytes | int] = (64,),
                 responses: Sequence[bytes | int] = (128,), *, start: float = T0, gap: float = 0.001,
                 interval: float = 1.0, vlan: int | Sequence[int] | None = None, pad: bool = True,
                 ttl: tuple[int, int] = (64, 64)) -> Session:
    """UDP request/response pairs ``interval`` seconds apart (response ``gap`` after its request).

    With no responses it is a one-way stream. Items are bytes or an int length of filler.
    """
    rec = _Recorder(Truth(PROTO_UDP, str(ip(client)), cport, str(ip(server)), sport), start, vlan, pad, ttl)
    t = rec.truth
    for i in range(max(len(requests), len(responses))):
        begun = rec.now
        if i < len(requests):
            payload = _payload(requests[i])
            rec.send(True, PROTO_UDP, udp(t.saddr, t.daddr, cport, sport, payload), len(payload))
            rec.wait(gap)
        if i < len(responses):
            payload = _payload(responses[i])
            rec.send(False, PROTO_UDP, udp(t.daddr, t.saddr, sport, cport, payload), len(payload))
        rec.now = begun + _us(interval)
    return rec.session()


def ping(client, server, ident: int = 0x1234, count: int = 3, *, size: int = 56, first_seq: int = 1,
         reply: bool = True, start: float = T0, interval: float = 1.0, rtt: float = 0.001,
         vlan: int | Sequence[int] | None = None, pad: bool = True, ttl: tuple[int, int] = (64, 64)) -> Session:
    """``count`` echo requests (ICMP or ICMPv6 by address family), each answered after ``rtt`` if ``reply``."""
    v6 = is_v6(client)
    proto, request_type = (PROTO_ICMPV6, ICMPV6_ECHO) if v6 else (PROTO_ICMP, ICMP_ECHO)
    rec = _Recorder(Truth(proto, str(ip(client)), request_type, str(ip(server)), ident), start, vlan, pad, ttl)
    t, data = rec.truth, filler(size)
    for seq in range(first_seq, first_seq + count):
        begun = rec.now
        for from_client in ((True, False) if reply else (True,)):
            src, dst = (t.saddr, t.daddr) if from_client else (t.daddr, t.saddr)
            if v6:
                message = icmpv6_echo(src, dst, ident, seq, data, reply=not from_client)
            else:
                message = icmp_echo(ident, seq, data, reply=not from_client)
            rec.send(from_client, proto, message, len(message))
            rec.wait(rtt)
        rec.now = begun + _us(interval)
    return rec.session()


def fragmented_udp(client, server, cport: int = 45000, sport: int = 7001, payload: bytes | int = 4000,
                   response: bytes | int | None = None, *, mtu: int = 1500, reverse: bool = False,
                   ident: int = 0x4242, start: float = T0, gap: float = 0.001,
                   vlan: int | Sequence[int] | None = None, pad: bool = True,
                   ttl: tuple[int, int] = (64, 64)) -> Session:
    """A UDP datagram from the client, fragmented to ``mtu``; optionally a (also fragmented) response.

    ``reverse`` sends each datagram's fragments last first. The truth counts the whole UDP payload
    on the side that sent it.
    """
    rec = _Recorder(Truth(PROTO_UDP, str(ip(client)), cport, str(ip(server)), sport), start, vlan, pad, ttl)
    t = rec.truth
    sends = [(True, _payload(payload))]
    if response is not None:
        sends.append((False, _payload(response)))
    for n, (from_client, data) in enumerate(sends):
        src, dst, sp, dp = (t.saddr, t.daddr, cport, sport) if from_client else (t.daddr, t.saddr, sport, cport)
        packets = fragment(src, dst, PROTO_UDP, udp(src, dst, sp, dp, data), mtu, ident + n,
                           ttl=ttl[0 if from_client else 1])
        for packet in reversed(packets) if reverse else packets:
            app = len(data) if packet is packets[0] else 0
            rec.emit(from_client, l2(packet, src, dst, vlan=vlan, pad=pad), app)
            rec.wait(gap)
    return rec.session()


def merge(*sources: Session | Iterable[Packet]) -> list[Packet]:
    """Interleave sessions (or packet lists, each in time order) into one list in time order."""
    lists = [s.packets if isinstance(s, Session) else list(s) for s in sources]
    return list(heapq.merge(*lists, key=lambda p: p.ts_us))


# --- pcap output --------------------------------------------------------------------------------

class PcapWriter:
    """Writes classic little-endian pcap with µs timestamps; ``snaplen`` truncates caplen, keeping orig_len."""

    def __init__(self, dest: str | BinaryIO, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 65535):
        self._own = not hasattr(dest, "write")
        self._f = open(dest, "wb") if self._own else dest
        self.snaplen = snaplen
        self.count = 0
        self._f.write(struct.pack("<IHHiIII", _PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype))

    def write(self, packet: Packet | tuple[int, bytes], orig_len: int | None = None) -> None:
        """Append one record; orig_len defaults to the frame's length."""
        ts_us, data = packet
        wire = len(data) if orig_len is None else orig_len
        cap = data[:self.snaplen]
        self._f.write(struct.pack("<IIII", ts_us // 1_000_000, ts_us % 1_000_000, len(cap), wire) + cap)
        self.count += 1

    def close(self) -> None:
        """Flush, and close the file if this writer opened it."""
        if self._own:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_pcap(path, packets: Iterable[Packet | tuple[int, bytes]], linktype: int = LINKTYPE_ETHERNET,
               snaplen: int = 65535):
    """Write packets to a classic pcap file and return the path."""
    with PcapWriter(str(path), linktype, snaplen) as writer:
        for packet in packets:
            writer.write(packet)
    return path
