"""IPFIX export (RFC 7011) of session records to one or more collectors, over UDP or TCP.

A session record leaves as one **bidirectional** IPFIX record (RFC 5103: the responder's counters in
reverse Information Elements, enterprise bit set, PEN 29305) or, with ``[export] uniflow = true``,
as up to two plain records, one per direction that carried packets, for collectors that drop
enterprise-specific fields. ``docs/ipfix.md`` maps every record column to its Information Element.

The recorder never waits for a collector: it encodes each batch once and hands it to one sender
thread per collector through a bounded queue; when a queue is full the batch is dropped and counted.
(Metering a capture file is the exception: there the queue applies back-pressure, ``lossless``.)

- UDP: every message fits in one unfragmented datagram (at most 1400 bytes of UDP payload), and the
  templates are sent first and again every ``template_interval`` seconds or every
  ``template_messages`` messages (RFC 7011 §8.4); messages are paced to ``udp_rate`` per second.
- TCP: one connection per collector, the IPFIX header's length field frames each message
  (RFC 7011 §10.4); templates are sent once at each connect; a lost connection is retried with
  exponential backoff while records queue (and, when the queue is full, are dropped and counted).

The sensor must never meter its own export traffic: :func:`exclusion_filter` gives the BPF clause
that keeps the collectors' traffic out of capture, and :func:`capture_filter` joins it to the
configured ``capture.bpf``.

Example::

    exporter = Exporter(["ipfix+udp://192.0.2.10:4739"], sensor_id="tap1")
    recorder.on_records.append(exporter)      # called with every batch of records
    ...
    exporter.close()
"""
from __future__ import annotations

import collections
import hashlib
import logging
import random
import select
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import capture as _capture

log = logging.getLogger(__name__)

IPFIX_VERSION = 10
PEN_REVERSE = 29305                  # RFC 5103 reverse Information Element Private Enterprise Number
DEFAULT_PORT = 4739                  # IANA: ipfix over udp, tcp and sctp
HEADER = struct.Struct("!HHIII")     # version, length, export time, sequence, observation domain
SET_HEADER = struct.Struct("!HH")    # set id, length
TEMPLATE_SET_ID = 2

UDP_MAX_MESSAGE = 1400               # UDP payload: stays under a 1500-byte path MTU with IPv6 headers
TCP_MAX_MESSAGE = 16384
TEMPLATE_INTERVAL = 60.0             # UDP: resend templates every this many seconds ...
TEMPLATE_MESSAGES = 1000             # ... or every this many messages, whichever comes first
UDP_RATE = 20000                     # UDP: messages per second at most (a burst of UDP_BURST first)
UDP_BURST = 200
QUEUE_RECORDS = 200_000              # per collector: encoded records waiting to be sent
BLOCK_TIMEOUT = 30.0                 # lossless mode: longest wait for queue space before dropping
CONNECT_TIMEOUT = 5.0                # TCP
SEND_TIMEOUT = 10.0                  # TCP: a collector that accepts nothing this long is reconnected
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0 # TCP reconnect delay: doubles from MIN to MAX, with jitter

# flowEndReason (IANA IE 136) by record cause. Start and Status are interim reports of a live flow.
END_REASON = {"Timeout": 1, "Status": 2, "Start": 2, "Stop": 3, "Shutdown": 4, "Evict": 5}
# biflowDirection (IE 239): 1 initiator (the source is the initiator: the sensor knows or inferred
# it from the protocol), 0 arbitrary (the initiator was guessed: Argus "<?>" and "?>").
KNOWN_INITIATOR = {"->", "<->", "<-", "who"}
TCP_FLAG_LETTERS = _capture.TCP_FLAG_LETTERS        # bit 0 (FIN) .. bit 7 (CWR)
# ICMP: the record keeps the type in sport; dport holds the echo id for queries, the quoted packet's
# destination port for errors (when quoted), and the code for other messages.
ICMP_REPLY = {8: 0, 13: 14, 15: 16, 17: 18, 128: 129}            # request type -> reply type
ICMP_QUERIES = {1: {0, 8, 13, 14, 15, 16, 17, 18}, 58: {128, 129}}
ICMP_ERRORS = {1: {3, 4, 5, 11, 12}, 58: {1, 2, 3, 4}}
ICMP4_UNREACH_CODES = {name: code for code, name in _capture.ICMP4_UNREACH.items()}


class ExportError(ValueError):
    """A collector URL is invalid, or a collector's host name cannot be resolved."""


# --- collectors and the capture filter -----------------------------------------------------------

@dataclass(frozen=True)
class CollectorAddress:
    """A parsed ``ipfix+udp://HOST:PORT`` or ``ipfix+tcp://HOST:PORT`` (IPv6 as ``[ADDR]:PORT``)."""

    url: str
    transport: str                   # "udp" or "tcp"
    host: str
    port: int

    def resolve(self) -> list[tuple[int, str]]:
        """(address family, numeric address) of the host, in getaddrinfo order, without duplicates.

        :raises ExportError: when the name does not resolve.
        """
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=kind)
        except socket.gaierror as exc:
            raise ExportError(f"{self.url}: cannot resolve {self.host!r}: {exc.strerror}") from None
        out: list[tuple[int, str]] = []
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr[0]) not in out:
                out.append((family, sockaddr[0]))
        if not out:
            raise ExportError(f"{self.url}: {self.host!r} has no IPv4 or IPv6 address")
        return out


def parse_collector(url: str) -> CollectorAddress:
    """Parse a collector URL; the port defaults to 4739.

    :raises ExportError: on another scheme, a missing host, a bad port, or a path or query.
    Example: ``parse_collector("ipfix+tcp://[2001:db8::1]:4739").port == 4739``
    """
    parts = urllib.parse.urlsplit(url)
    transport = {"ipfix+udp": "udp", "ipfix+tcp": "tcp"}.get(parts.scheme)
    if transport is None:
        raise ExportError(f"{url!r}: must start with ipfix+udp:// or ipfix+tcp://")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ExportError(f"{url!r}: must be ipfix+{transport}://HOST:PORT, nothing more")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ExportError(f"{url!r}: bad port") from None
    if not parts.hostname:
        raise ExportError(f"{url!r}: no host")
    return CollectorAddress(url, transport, parts.hostname, port)


def exclusion_filter(collectors: Sequence[str]) -> str:
    """The BPF expression that keeps the sensor's own export traffic out of capture ('' if none).

    UDP: datagrams to the collector's address and port. TCP: both directions of the connection
    (the collector's ACKs too). Host names are resolved now, to every address they have.
    Example: ``not (udp and (dst host 192.0.2.10) and dst port 4739)``

    :raises ExportError: on a bad URL or a name that does not resolve.
    """
    clauses = []
    for url in collectors:
        c = parse_collector(url)
        addrs = [a for _, a in c.resolve()]
        dst = " or ".join(f"dst host {a}" for a in addrs)
        if c.transport == "udp":
            clauses.append(f"(udp and ({dst}) and dst port {c.port})")
        else:
            src = " or ".join(f"src host {a}" for a in addrs)
            clauses.append(f"(tcp and ((({dst}) and dst port {c.port}) or "
                           f"(({src}) and src port {c.port})))")
    return f"not ({' or '.join(clauses)})" if clauses else ""


def capture_filter(bpf: str, collectors: Sequence[str]) -> str:
    """The configured BPF filter joined with :func:`exclusion_filter` of the collectors."""
    exclusion = exclusion_filter(collectors)
    if not exclusion:
        return bpf
    return f"({bpf}) and {exclusion}" if bpf.strip() else exclusion


def observation_domain(sensor_id: str) -> int:
    """A stable, non-zero 32-bit Observation Domain ID for a sensor id (first 4 bytes of SHA-256)."""
    return int.from_bytes(hashlib.sha256(sensor_id.encode()).digest()[:4], "big") or 1


# --- templates -----------------------------------------------------------------------------------

Getter = Callable[[dict[str, Any], str, str], Any]


@dataclass(frozen=True)
class Field:
    """One field of a template: an IANA Information Element, optionally its RFC 5103 reverse.

    ``get(record, s, d)`` gives the value; s and d are the column prefixes of the direction
    exported (``"s", "d"``, or ``"d", "s"`` for the reverse record of a uniflow pair).
    """

    name: str
    ie: int
    length: int
    column: str                      # the record column(s) it carries, for the documentation
    get: Getter
    reverse: bool = False

    @property
    def spec(self) -> bytes:
        if self.reverse:
            return struct.pack("!HHI", self.ie | 0x8000, self.length, PEN_REVERSE)
        return struct.pack("!HH", self.ie, self.length)

    @property
    def code(self) -> str:
        return {1: "B", 2: "H", 4: "4s", 6: "6s", 8: "Q", 16: "16s"}[self.length]


def _ms(t: float) -> int:
    return round(t * 1e6) // 1000


_FLAG_BITS: dict[str, int] = {}


def _flags(letters: str) -> int:
    bits = _FLAG_BITS.get(letters)
    if bits is None:
        bits = sum(1 << TCP_FLAG_LETTERS.index(c) for c in set(letters) if c in TCP_FLAG_LETTERS)
        _FLAG_BITS[letters] = bits
    return bits


def _ip4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a)


def _ip6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def _mac(a: str | None) -> bytes:
    return bytes.fromhex(a.replace(":", "")) if a else bytes(6)


def icmp_type_code(r: dict[str, Any], reverse: bool = False) -> tuple[int, int]:
    """ICMP type and code of a record (of its responder's messages with reverse).

    The code comes from ``r["icmp_code"]`` when the record has it. Otherwise: 0 for queries (echo,
    timestamp, ...), the IPv4 unreachable code named by the state (URN URH URO URP URF URS), the
    dport for messages that are neither queries nor errors, and 0 for other errors (their dport is
    the quoted packet's port, not the code).
    """
    proto, icmp_type = r["proto"], r["sport"] or 0
    if reverse:
        icmp_type = ICMP_REPLY.get(icmp_type, icmp_type)
    code = r.get("icmp_code")
    if code is None:
        if icmp_type in ICMP_QUERIES.get(proto, ()):
            code = 0
        elif icmp_type in ICMP_ERRORS.get(proto, ()):
            code = ICMP4_UNREACH_CODES.get(r.get("state") or "", 0) if proto == 1 and icmp_type == 3 else 0
        else:
            code = r["dport"] or 0
    return icmp_type, code & 0xFF


def _icmp_type_code(r: dict[str, Any], s: str, d: str) -> int:
    icmp_type, code = icmp_type_code(r, reverse=s == "d")
    return icmp_type << 8 | code


def _f(name: str, ie: int, length: int, column: str, get: Getter, reverse: bool = False) -> Field:
    return Field(name, ie, length, column, get, reverse)


# The building blocks. Reverse fields always read the responder's (d*) columns.
F_START = _f("flowStartMilliseconds", 152, 8, "stime", lambda r, s, d: _ms(r["stime"]))
F_END = _f("flowEndMilliseconds", 153, 8, "ltime", lambda r, s, d: _ms(r["ltime"]))
F_SRC4 = _f("sourceIPv4Address", 8, 4, "saddr", lambda r, s, d: _ip4(r[s + "addr"]))
F_DST4 = _f("destinationIPv4Address", 12, 4, "daddr", lambda r, s, d: _ip4(r[d + "addr"]))
F_SRC6 = _f("sourceIPv6Address", 27, 16, "saddr", lambda r, s, d: _ip6(r[s + "addr"]))
F_DST6 = _f("destinationIPv6Address", 28, 16, "daddr", lambda r, s, d: _ip6(r[d + "addr"]))
F_SPORT = _f("sourceTransportPort", 7, 2, "sport", lambda r, s, d: r[s + "port"] or 0)
F_DPORT = _f("destinationTransportPort", 11, 2, "dport", lambda r, s, d: r[d + "port"] or 0)
F_ICMP4 = _f("icmpTypeCodeIPv4", 32, 2, "sport (type), code", _icmp_type_code)
F_ICMP6 = _f("icmpTypeCodeIPv6", 139, 2, "sport (type), code", _icmp_type_code)
F_PROTO = _f("protocolIdentifier", 4, 1, "proto", lambda r, s, d: r["proto"])
F_ETHERTYPE = _f("ethernetType", 256, 2, "proto (an EtherType)", lambda r, s, d: r["proto"])
F_PKTS = _f("packetDeltaCount", 2, 8, "spkts", lambda r, s, d: r[s + "pkts"])
F_BYTES = _f("octetDeltaCount", 1, 8, "sbytes", lambda r, s, d: r[s + "bytes"])
F_APPBYTES = _f("transportOctetDeltaCount", 401, 8, "sappbytes", lambda r, s, d: r[s + "appbytes"])
F_FLAGS = _f("tcpControlBits", 6, 2, "sflags", lambda r, s, d: _flags(r[s + "flags"] or ""))
F_TOS = _f("ipClassOfService", 5, 1, "stos", lambda r, s, d: r[s + "tos"] or 0)
F_TTL = _f("ipTTL", 192, 1, "sttl", lambda r, s, d: r[s + "ttl"] or 0)
F_SMAC = _f("sourceMacAddress", 56, 6, "smac", lambda r, s, d: _mac(r[s + "mac"]))
F_DMAC = _f("destinationMacAddress", 80, 6, "dmac", lambda r, s, d: _mac(r[d + "mac"]))
F_L2SRC = _f("sourceMacAddress", 56, 6, "saddr (a MAC)", lambda r, s, d: _mac(r[s + "addr"]))
F_L2DST = _f("destinationMacAddress", 80, 6, "daddr (a MAC)", lambda r, s, d: _mac(r[d + "addr"]))
F_VLAN = _f("vlanId", 58, 2, "svlan", lambda r, s, d: r[s + "vlan"] or 0)
F_REASON = _f("flowEndReason", 136, 1, "cause", lambda r, s, d: END_REASON.get(r["cause"], 0))
F_BIDIR = _f("biflowDirection", 239, 1, "dir",
             lambda r, s, d: 1 if r["dir"] in KNOWN_INITIATOR else 0)
R_PKTS = _f("reversePacketDeltaCount", 2, 8, "dpkts", lambda r, s, d: r["dpkts"], True)
R_BYTES = _f("reverseOctetDeltaCount", 1, 8, "dbytes", lambda r, s, d: r["dbytes"], True)
R_APPBYTES = _f("reverseTransportOctetDeltaCount", 401, 8, "dappbytes",
                lambda r, s, d: r["dappbytes"], True)
R_FLAGS = _f("reverseTcpControlBits", 6, 2, "dflags", lambda r, s, d: _flags(r["dflags"] or ""), True)
R_TOS = _f("reverseIpClassOfService", 5, 1, "dtos", lambda r, s, d: r["dtos"] or 0, True)
R_TTL = _f("reverseIpTTL", 192, 1, "dttl", lambda r, s, d: r["dttl"] or 0, True)
R_VLAN = _f("reverseVlanId", 58, 2, "dvlan", lambda r, s, d: r["dvlan"] or 0, True)

# What each kind of session carries, in template order, before the per-direction counters.
_KEYS = {
    "ip4": (F_SRC4, F_DST4, F_SPORT, F_DPORT, F_PROTO),
    "ip6": (F_SRC6, F_DST6, F_SPORT, F_DPORT, F_PROTO),
    "icmp4": (F_SRC4, F_DST4, F_ICMP4, F_PROTO),
    "icmp6": (F_SRC6, F_DST6, F_ICMP6, F_PROTO),
    "arp": (F_SRC4, F_DST4, F_ETHERTYPE),             # IPv4-keyed non-IP protocols: ARP, RARP
    "l2": (F_L2SRC, F_L2DST, F_ETHERTYPE),            # MAC-keyed flows: other EtherTypes, LLC
}
KINDS = tuple(_KEYS)


def _fields(kind: str, biflow: bool) -> tuple[Field, ...]:
    ip = kind in ("ip4", "ip6", "icmp4", "icmp6")
    forward = [F_PKTS, F_BYTES]
    reverse = [R_PKTS, R_BYTES]
    if ip:
        forward += [F_APPBYTES]
        reverse += [R_APPBYTES]
    if kind in ("ip4", "ip6"):
        forward += [F_FLAGS]
        reverse += [R_FLAGS]
    if ip:
        forward += [F_TOS, F_TTL]
        reverse += [R_TOS, R_TTL]
    macs = [] if kind == "l2" else [F_SMAC, F_DMAC]
    # Reverse fields come before the forward ones: nfdump 1.7 maps reverse counters to its "out"
    # counters but applies other reverse elements (flags, TOS, TTL, VLAN) to the forward fields, so
    # with this order its forward values are the last written. The order means nothing to IPFIX.
    head = [F_START, F_END, *_KEYS[kind]] + ([F_BIDIR, *reverse, R_VLAN] if biflow else [])
    return tuple(head + [*forward, *macs, F_VLAN, F_REASON])


@dataclass(frozen=True)
class Template:
    """One IPFIX template: its id, the kind of session it carries and its fields."""

    id: int
    kind: str
    biflow: bool
    fields: tuple[Field, ...]

    @property
    def record(self) -> bytes:
        """The template record (RFC 7011 §3.4.1): id, field count, field specifiers."""
        return struct.pack("!HH", self.id, len(self.fields)) + b"".join(f.spec for f in self.fields)

    @property
    def struct(self) -> struct.Struct:
        return struct.Struct("!" + "".join(f.code for f in self.fields))


BIFLOW_TEMPLATES = {k: Template(256 + i, k, True, _fields(k, True)) for i, k in enumerate(KINDS)}
UNIFLOW_TEMPLATES = {k: Template(272 + i, k, False, _fields(k, False)) for i, k in enumerate(KINDS)}


def session_kind(rec: dict[str, Any]) -> str | None:
    """Which template a record takes (see ``KINDS``), or None when it cannot be exported."""
    saddr, proto = rec["saddr"], rec["proto"]
    try:
        if "." in saddr:
            socket.inet_pton(socket.AF_INET, saddr)
            if proto > 255:
                return "arp"
            return "icmp4" if proto == 1 else "ip4"
        if saddr.count(":") == 5 and len(saddr) == 17 and "::" not in saddr:
            return "l2" if proto <= 0xFFFF else None
        socket.inet_pton(socket.AF_INET6, saddr)
        if proto > 255:
            return None
        return "icmp6" if proto == 58 else "ip6"
    except (OSError, TypeError):
        return None


class Encoder:
    """Turns session records into encoded IPFIX data records, ``(template id, bytes)``.

    :param uniflow: two records per session (one per direction with packets), no reverse IEs.
    """

    def __init__(self, uniflow: bool = False):
        self.uniflow = uniflow
        self.templates = UNIFLOW_TEMPLATES if uniflow else BIFLOW_TEMPLATES
        self._compiled = {k: (t.id, t.struct.pack, tuple(f.get for f in t.fields))
                          for k, t in self.templates.items()}
        self.skipped = 0               # records that fit no template (counted, not exported)

    def template_records(self) -> list[bytes]:
        return [t.record for t in self.templates.values()]

    def encode(self, records: Iterable[dict[str, Any]]) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for r in records:
            kind = session_kind(r)
            if kind is None:
                self.skipped += 1
                continue
            tid, pack, getters = self._compiled[kind]
            try:
                if not self.uniflow:
                    out.append((tid, pack(*[g(r, "s", "d") for g in getters])))
                    continue
                if r["spkts"] or not r["dpkts"]:
                    out.append((tid, pack(*[g(r, "s", "d") for g in getters])))
                if r["dpkts"]:
                    out.append((tid, pack(*[g(r, "d", "s") for g in getters])))
            except (KeyError, TypeError, ValueError, OSError, struct.error) as exc:
                self.skipped += 1
                log.debug("not exported (%s): %r", exc, r)
        return out


# --- messages ------------------------------------------------------------------------------------

def template_message(template_records: Sequence[bytes], sequence: int, domain: int,
                     export_time: int) -> bytes:
    """One message holding a template set with every template."""
    body = b"".join(template_records)
    tset = SET_HEADER.pack(TEMPLATE_SET_ID, SET_HEADER.size + len(body)) + body
    return HEADER.pack(IPFIX_VERSION, HEADER.size + len(tset), export_time, sequence, domain) + tset


def pack_messages(records: Sequence[tuple[int, bytes]], max_size: int, sequence: int, domain: int,
                  export_time: int) -> list[tuple[bytes, int]]:
    """Pack data records into messages of at most max_size bytes: ``[(message, record count)]``.

    Records are grouped by template (one data set per template per message); the sequence number
    of each message counts the data records sent before it (RFC 7011 §3.1), modulo 2**32.
    """
    by_template: dict[int, list[bytes]] = collections.defaultdict(list)
    for tid, data in records:
        by_template[tid].append(data)
    messages: list[tuple[bytes, int]] = []
    sets: list[bytes] = []
    size, count = HEADER.size, 0

    def flush() -> None:
        nonlocal sets, size, count, sequence
        if count:
            messages.append((HEADER.pack(IPFIX_VERSION, size, export_time, sequence % 2**32, domain)
                             + b"".join(sets), count))
            sequence += count
        sets, size, count = [], HEADER.size, 0

    for tid, items in by_template.items():
        i = 0
        while i < len(items):
            room = max_size - size - SET_HEADER.size
            n = 0
            used = 0
            while i + n < len(items) and used + len(items[i + n]) <= room:
                used += len(items[i + n])
                n += 1
            if n == 0:
                if count == 0:
                    raise ValueError(f"a record of template {tid} does not fit in {max_size} bytes")
                flush()
                continue
            chunk = items[i:i + n]
            sets.append(SET_HEADER.pack(tid, SET_HEADER.size + used) + b"".join(chunk))
            size += SET_HEADER.size + used
            count += n
            i += n
    flush()
    return messages


# --- collectors ----------------------------------------------------------------------------------

class Collector:
    """One collector: a bounded queue of encoded records and a sender thread.

    Stats (``stats()``): messages, records, bytes sent; records dropped (queue full, send failure,
    or still queued at close); send errors; connects (TCP).
    """

    def __init__(self, address: CollectorAddress, domain: int, template_records: list[bytes], *,
                 lossless: bool = False, queue_records: int = QUEUE_RECORDS,
                 template_interval: float = TEMPLATE_INTERVAL,
                 template_messages: int = TEMPLATE_MESSAGES, udp_rate: float = UDP_RATE,
                 backoff: tuple[float, float] = (BACKOFF_MIN, BACKOFF_MAX),
                 block_timeout: float = BLOCK_TIMEOUT):
        self.address = address
        self.udp = address.transport == "udp"
        self.domain = domain
        self.templates = template_records
        self.lossless = lossless
        self.queue_records = queue_records
        self.template_interval = template_interval
        self.template_messages = template_messages
        self.udp_rate = udp_rate
        self.backoff = backoff
        self.block_timeout = block_timeout
        self.max_message = UDP_MAX_MESSAGE if self.udp else TCP_MAX_MESSAGE
        self.messages = self.records = self.bytes = self.errors = self.connects = 0
        self._dropped_queue = 0                  # producer side, under _cond: queue full, closed
        self._dropped_send = 0                   # sender thread only: not connected, send failed
        self.last_error = ""
        self._queue: collections.deque[list[tuple[int, bytes]]] = collections.deque()
        self._queued = 0
        self._busy = False
        self._backing_off = False                # TCP: waiting to reconnect
        self._cond = threading.Condition()
        self._closing = False
        self._wake = threading.Event()           # interrupts a reconnect backoff
        self._sock: socket.socket | None = None
        self._sequence = 0
        self._templates_at = 0.0                 # monotonic time templates were last sent (UDP)
        self._since_templates = 0                # messages since (UDP)
        self._tokens = float(UDP_BURST)
        self._token_time = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"ipfix {address.url}", daemon=True)
        self._thread.start()

    # producer side (the recorder's thread)
    def put(self, records: list[tuple[int, bytes]]) -> None:
        """Queue a batch; never blocks unless lossless (then at most block_timeout seconds, and
        not at all while a TCP collector is unreachable)."""
        n = len(records)
        with self._cond:
            if self.lossless and not self._closing:
                deadline = time.monotonic() + self.block_timeout
                while self._queued and self._queued + n > self.queue_records:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._backing_off:     # no progress to wait for: drop
                        break
                    self._cond.wait(min(left, 0.1))
            if self._closing or (self._queued and self._queued + n > self.queue_records):
                self._dropped_queue += n
                return
            self._queue.append(records)
            self._queued += n
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was sent (or dropped); False on timeout, or at once when
        a TCP collector is unreachable (waiting for its reconnect would only delay a shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queued or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._backing_off:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within timeout), then stop; what is left is counted as dropped."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._dropped_queue += self._queued
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout=max(timeout, 1.0))
        self._disconnect()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def dropped(self) -> int:
        """Records that will never be sent: queue full, collector unreachable, send failed."""
        return self._dropped_queue + self._dropped_send

    def stats(self) -> dict[str, Any]:
        return {"collector": self.address.url, "transport": self.address.transport,
                "connected": self.connected, "messages": self.messages, "records": self.records,
                "bytes": self.bytes, "dropped": self.dropped, "queued": self._queued,
                "errors": self.errors, "connects": self.connects, "last_error": self.last_error}

    # sender side
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue.popleft()
                self._queued -= len(batch)
                self._busy = True
                self._cond.notify_all()
            try:
                self._send_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the sender thread must survive anything
                self._fail(f"internal error: {exc!r}")
                self._dropped_send += len(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send_batch(self, batch: list[tuple[int, bytes]]) -> None:
        if not self._ensure_connected():
            self._dropped_send += len(batch)
            return
        messages = pack_messages(batch, self.max_message, self._sequence, self.domain, int(time.time()))
        for i, (message, count) in enumerate(messages):
            if self.udp and (self._templates_at == 0.0
                             or time.monotonic() - self._templates_at >= self.template_interval
                             or self._since_templates >= self.template_messages):
                if self._send(self._template_message()):   # else: still due before the next
                    self._templates_at = time.monotonic()
                    self._since_templates = 0
            if not self._send(message):
                if self.udp:                     # this datagram is lost; the next may go through
                    self._dropped_send += count
                    self._sequence += count      # numbered already: the collector sees the gap
                    continue
                self._dropped_send += sum(c for _, c in messages[i:])
                return
            self._sequence += count
            self.records += count
            self._since_templates += 1

    def _template_message(self) -> bytes:
        return template_message(self.templates, self._sequence % 2**32, self.domain, int(time.time()))

    def _send(self, message: bytes) -> bool:
        sock = self._sock
        if sock is None:
            return False
        if self.udp:
            self._pace()
        try:
            if self.udp:
                sock.send(message)
            else:
                sock.sendall(message)
        except OSError as exc:
            self._fail(f"send: {exc}")
            if not self.udp:
                self._disconnect()
            return False
        self.messages += 1
        self.bytes += len(message)
        return True

    def _pace(self) -> None:
        """Token bucket: at most udp_rate messages per second after a burst of UDP_BURST."""
        if self.udp_rate <= 0:
            return
        now = time.monotonic()
        self._tokens = min(float(UDP_BURST), self._tokens + (now - self._token_time) * self.udp_rate)
        self._token_time = now
        if self._tokens < 1.0:
            time.sleep((1.0 - self._tokens) / self.udp_rate)
            self._tokens = 1.0
            self._token_time = time.monotonic()
        self._tokens -= 1.0

    def _fail(self, message: str) -> None:
        self.errors += 1
        if message != self.last_error:
            log.warning("IPFIX %s: %s", self.address.url, message)
        self.last_error = message

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _ensure_connected(self) -> bool:
        """UDP: a connected datagram socket. TCP: connect, retrying with backoff until it works or
        the collector is closed; templates go out first on each new connection."""
        if not self.udp and self._sock is not None and self._peer_closed():
            self._fail("connection closed by the collector")
            self._disconnect()
        delay = self.backoff[0]
        while self._sock is None:
            if self._closing:
                return False
            try:
                self._sock = self._open()
            except (OSError, ExportError) as exc:
                self._fail(f"connect: {exc}")
                if self._closing:
                    return False
                self._backing_off = True
                self._wake.wait(delay * random.uniform(0.8, 1.0))
                self._backing_off = False
                delay = min(delay * 2, self.backoff[1])
                continue
            self.connects += 1
            if not self.udp:
                self._sequence = 0               # a new transport session (RFC 7011 §10.4.1)
                log.info("IPFIX %s: connected", self.address.url)
                if not self._send(self._template_message()):
                    continue
        return True

    def _peer_closed(self) -> bool:
        """A collector never sends on an IPFIX TCP session: readable means closed (EOF or reset)."""
        assert self._sock is not None
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and not self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            return True

    def _open(self) -> socket.socket:
        family, addr = self.address.resolve()[0]
        if self.udp:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect((addr, self.address.port))
            return sock
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect((addr, self.address.port))
            sock.settimeout(SEND_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            raise
        return sock


class Exporter:
    """Exports every batch of session records to each configured collector.

    Call it with a list of records (it is a ``Recorder.on_records`` hook); :meth:`close` sends what
    is queued and stops the sender threads.

    :param collectors: URLs, ``ipfix+udp://HOST:PORT`` or ``ipfix+tcp://HOST:PORT``.
    :param sensor_id: hashed into the Observation Domain ID (:func:`observation_domain`).
    :param uniflow: two plain records per session instead of one RFC 5103 biflow record.
    :param lossless: wait for queue space instead of dropping (metering files, not live capture).
    :raises ExportError: on a bad collector URL.
    Example: ``with Exporter(["ipfix+udp://127.0.0.1:4739"], "tap1") as exp: exp(records)``
    """

    def __init__(self, collectors: Sequence[str], sensor_id: str, uniflow: bool = False,
                 lossless: bool = False, **tuning: Any):
        addresses = [parse_collector(url) for url in collectors]
        self.encoder = Encoder(uniflow)
        self.domain = observation_domain(sensor_id)
        templates = self.encoder.template_records()
        self.collectors = [Collector(a, self.domain, templates, lossless=lossless, **tuning)
                           for a in addresses]

    @classmethod
    def from_config(cls, export: Any, sensor_id: str, lossless: bool = False) -> Exporter:
        """An exporter for an ``[export]`` config section (``collectors``, ``uniflow``)."""
        return cls(export.collectors, sensor_id, uniflow=export.uniflow, lossless=lossless)

    def __call__(self, records: list[dict[str, Any]]) -> None:
        if not records or not self.collectors:
            return
        encoded = self.encoder.encode(records)
        if encoded:
            for c in self.collectors:
                c.put(encoded)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every collector has sent what is queued; False on timeout."""
        deadline = time.monotonic() + timeout
        return all(c.flush(max(0.0, deadline - time.monotonic())) for c in self.collectors)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (within timeout), then stop every sender thread."""
        for c in self.collectors:
            c.close(timeout)
        for s in self.stats():
            log.log(logging.WARNING if s["dropped"] else logging.INFO,
                    "IPFIX %s: %d records sent in %d messages, %d dropped, %d not exportable",
                    s["collector"], s["records"], s["messages"], s["dropped"], s["skipped"])

    def stats(self) -> list[dict[str, Any]]:
        """Per collector: messages, records, bytes sent, records dropped, errors, connects."""
        return [dict(c.stats(), skipped=self.encoder.skipped) for c in self.collectors]

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
