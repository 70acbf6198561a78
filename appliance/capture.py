"""The only importer of the native module: packet sources, metering and record decoding.

Packets never reach Python. Each loop iteration polls the C core for a batch of packets, drains the
finished records into one preallocated array and unpacks them with one precompiled struct format.
The recorder does not even unpack them: ``ArchiveStore`` inserts packed records from C.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import record as _record
from .config import Config, FlowsConfig

try:
    from ._native import ffi, lib
except ImportError as exc:  # pragma: no cover - the build step makes it
    raise ImportError(f"flowtap's native module is not built ({exc}); run `make build`") from exc

ABI_VERSION = 1
if lib.SENSOR_ABI_VERSION != ABI_VERSION:
    raise ImportError(f"native module ABI {lib.SENSOR_ABI_VERSION}, expected {ABI_VERSION}: rebuild")

# struct codes of sensor_flow_t's member types (it has no padding: _Static_assert in sensor.c).
_STRUCT_CODES = {"uint64_t": "Q", "uint32_t": "I", "uint16_t": "H", "uint8_t": "B"}


def _member_code(ctype: Any) -> str:
    """The struct format of one member: ``2Q`` for uint64_t[2], ``16s16s`` for uint8_t[2][16]."""
    if ctype.kind != "array":
        return _STRUCT_CODES[ctype.cname]
    item = ctype.item
    if item.kind == "array":
        return f"{item.length}s" * ctype.length
    if item.cname == "char":
        return f"{ctype.length}s"
    return f"{ctype.length}{_STRUCT_CODES[item.cname]}"


# sensor_flow_t, member by member, read from the native module (native/sensor.h).
RECORD_LAYOUT = tuple((name, _member_code(f.type)) for name, f in ffi.typeof("sensor_flow_t").fields)
RECORD = struct.Struct("<" + "".join(code for _, code in RECORD_LAYOUT))
RECORD_SIZE = RECORD.size
POLL_PACKETS = 8192
DRAIN_BATCH = 4096


def names(array: Any) -> tuple[str, ...]:
    """A ``const char *[N]`` name table of the native module (by number)."""
    return tuple(ffi.string(p).decode() for p in array)


def name_table(table: Any) -> dict[int, str]:
    """A ``sensor_name_t[]`` table of the native module (number -> name; a NULL name ends it)."""
    out, i = {}, 0
    while table[i].name != ffi.NULL:
        out[table[i].number] = ffi.string(table[i].name).decode()
        i += 1
    return out


# The names are native/format.c's (the one copy): read once here.
CAUSES = names(lib.sensor_cause_names)
STATES = names(lib.sensor_state_names)
DIRS = tuple(d.strip() for d in names(lib.sensor_dir_names))
CONN_STATES = (None,) + names(lib.sensor_conn_state_names)[1:]   # 0: not classified
DECODE_ERRORS = ("link_truncated", "unknown_linktype", "ip_truncated", "ip_version", "ip_header_length",
                 "ip_total_length", "l4_truncated", "tcp_header_length", "encapsulation",
                 "fragment_table_full")
TCP_FLAG_LETTERS = ffi.string(lib.sensor_tcp_flag_letters).decode()   # bit 0 (FIN) to bit 7 (CWR)

# Argus ICMP state names by (type) and, for unreachables, by code.
ICMP4_NAMES = name_table(lib.sensor_icmp4_names)
ICMP4_UNREACH = name_table(lib.sensor_icmp4_unreach_names)
ICMP6_NAMES = name_table(lib.sensor_icmp6_names)
# Community ID: the spec's ICMP request/reply pairs, type -> counterpart (pycommunityid's icmp.py and
# icmp6.py, after Zeek's ICMP4_counterpart/ICMP6_counterpart); native/store.c icmp_pair has the same.
ICMP_PAIRS = {
    1: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17},
    58: {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136, 136: 135, 139: 140,
         140: 139, 144: 145, 145: 144},
}
# The replies of the queries native/decode.c keys by identifier: a record whose sport is one of these
# saw only replies, and its saddr is the requester they went to (native/flowtable.c fill_record).
ICMP_REPLIES = {1: {0, 14, 16, 18}, 58: {129}}
PORTED_PROTOS = {6, 17, 132, 1, 58}

ADDR_IP4, ADDR_IP6, ADDR_MAC = lib.SENSOR_ADDR_IP4, lib.SENSOR_ADDR_IP6, lib.SENSOR_ADDR_MAC
ICMP_STATE = lib.SENSOR_STATE_ICMP     # state: named from the ICMP type and code
FLG_VLAN, FLG_MPLS, FLG_PPPOE = lib.SENSOR_FLG_VLAN, lib.SENSOR_FLG_MPLS, lib.SENSOR_FLG_PPPOE
FLG_FRAG, FLG_ORPHAN, FLG_GAP = lib.SENSOR_FLG_FRAG, lib.SENSOR_FLG_FRAG_ORPHAN, lib.SENSOR_FLG_GAP
FLG_RETRANS, FLG_QINQ, FLG_UNREACH = lib.SENSOR_FLG_RETRANS, lib.SENSOR_FLG_QINQ, lib.SENSOR_FLG_ICMP_UNREACH


class CaptureError(Exception):
    """A capture source could not be opened, or failed part way through."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


def native_config(flows: FlowsConfig, snaplen: int = 128, ring_bytes: int = 0, promisc: bool = True,
                  inbound_only: bool = False) -> Any:
    """A sensor_config_t for the C core."""
    c = ffi.new("sensor_config_t *")
    c.max_flows = flows.max_flows
    c.max_frags = flows.max_frags
    c.timeout_tcp_s = flows.timeout_tcp
    c.timeout_udp_s = flows.timeout_udp
    c.timeout_icmp_s = flows.timeout_icmp
    c.timeout_other_s = flows.timeout_other
    c.timeout_closed_s = flows.timeout_closed
    c.timeout_frag_s = flows.timeout_frag
    c.status_interval_s = flows.status_interval
    c.record_ring = POLL_PACKETS * 4   # a packet adds at most 4 records; poll never overfills it
    c.snaplen = snaplen
    c.ring_bytes = ring_bytes
    c.promisc = 1 if promisc else 0
    c.inbound_only = 1 if inbound_only else 0
    c.timeout_ms = 100
    return c


class Capture:
    """One packet source metered by the C core. Use as a context manager: the handle is closed
    deterministically on exit, never by the garbage collector.

    :param handle: an open ``sensor_t *`` (from :meth:`open_file` or :meth:`open_live`).
    """

    def __init__(self, handle: Any, name: str):
        self._h = handle
        self.name = name
        self.interfaces: tuple[str, ...] = ()
        self._out = ffi.new("sensor_flow_t[]", DRAIN_BATCH)
        self._view = ffi.buffer(self._out)
        self._stats = ffi.new("sensor_stats_t *")

    @classmethod
    def open_file(cls, path: str, flows: FlowsConfig | None = None) -> Capture:
        """Open a pcap or pcapng file.

        :raises CaptureError: when libpcap (or the pcapng reader) cannot open it.
        Example: ``with Capture.open_file("x.pcap") as cap: ...``
        """
        cfg = native_config(flows or FlowsConfig())
        err = ffi.new("char[]", lib.SENSOR_ERRBUF_SIZE)
        out = ffi.new("sensor_t **")
        rc = lib.sensor_open_file(cfg, str(path).encode(), err, out)
        if rc < 0:
            raise CaptureError(ffi.string(err).decode(errors="replace") or f"cannot open {path}", rc)
        return cls(out[0], str(path))

    @classmethod
    def open_live(cls, interfaces: Sequence[str], flows: FlowsConfig | None = None, bpf: str = "",
                  snaplen: int = 128, ring_bytes: int = 0, promisc: bool = True,
                  inbound_only: bool = False) -> Capture:
        """Open live interfaces feeding one flow table, through libpcap's memory-mapped ring.

        Several interfaces are the members of a bridge captured inbound only: each frame is metered
        once, and a record's ``sintf`` is the index of the interface its initiator was seen on.

        :raises CaptureError: on a missing interface, missing privileges or a bad filter.
        """
        cfg = native_config(flows or FlowsConfig(), snaplen, ring_bytes, promisc, inbound_only)
        err = ffi.new("char[]", lib.SENSOR_ERRBUF_SIZE)
        out = ffi.new("sensor_t **")
        first, *rest = interfaces
        rc = lib.sensor_open_live(cfg, first.encode(), bpf.encode(), err, out)
        if rc < 0:
            raise CaptureError(ffi.string(err).decode(errors="replace"), rc)
        cap = cls(out[0], ",".join(interfaces))
        for iface in rest:
            rc = lib.sensor_add_live(cap._h, cfg, iface.encode(), bpf.encode(), err)
            if rc < 0:
                cap.close()
                raise CaptureError(ffi.string(err).decode(errors="replace"), rc)
        cap.interfaces = tuple(interfaces)
        return cap

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the native handle (idempotent)."""
        if self._h is not None:
            lib.sensor_close(self._h)
            self._h = None

    def _check(self, rc: int) -> int:
        if rc < 0 and rc != lib.SENSOR_EOF:
            raise CaptureError(ffi.string(lib.sensor_last_error(self._h)).decode(errors="replace"), rc)
        return rc

    def poll(self, max_packets: int = POLL_PACKETS, until_us: int = 0) -> int:
        """Meter up to max_packets packets: the count handled, or ``lib.SENSOR_EOF``. With until_us,
        stop right after the first packet at or past that packet time.

        :raises CaptureError: when the file is truncated or corrupt (after metering what was read).
        """
        return self._check(lib.sensor_poll(self._h, max_packets, until_us))

    def drain_raw(self, now_us: int) -> Iterator[tuple]:
        """Finished records as raw tuples (RECORD layout), expiring flows idle at now_us."""
        while True:
            n = lib.sensor_drain(self._h, self._out, DRAIN_BATCH, now_us)
            if n:
                yield from RECORD.iter_unpack(self._view[: n * RECORD_SIZE])
            if n < DRAIN_BATCH:
                return

    def drain_packed(self, now_us: int) -> Iterator[bytes]:
        """Finished records as packed sensor_flow_t (ArchiveStore's input), in batches of at most
        DRAIN_BATCH records (so ending a full table does not hold it all at once)."""
        while True:
            n = lib.sensor_drain(self._h, self._out, DRAIN_BATCH, now_us)
            if n:
                yield bytes(self._view[: n * RECORD_SIZE])
            if n < DRAIN_BATCH:
                return

    def drain_count(self, now_us: int) -> int:
        """Drain finished records and only count them (for metering without output)."""
        total = 0
        while True:
            n = lib.sensor_drain(self._h, self._out, DRAIN_BATCH, now_us)
            total += n
            if n < DRAIN_BATCH:
                return total

    def top_flows(self, n: int = 20, srcid: str = "") -> list[dict[str, Any]]:
        """The busiest open sessions now (by bytes), as records with cause Start."""
        n = min(n, 64, DRAIN_BATCH)
        got = lib.sensor_top_flows(self._h, self._out, n)
        return [to_record(r, srcid) for r in RECORD.iter_unpack(self._view[: got * RECORD_SIZE])]

    def end_all(self, cause: int = lib.SENSOR_CAUSE_SHUTDOWN) -> None:
        """End every open flow (default cause Shutdown); the records come out of the next drains."""
        lib.sensor_end_all(self._h, cause)

    def set_filter(self, bpf: str) -> None:
        """Replace the kernel BPF filter."""
        self._check(lib.sensor_set_filter(self._h, bpf.encode()))

    def reconfigure(self, flows: FlowsConfig) -> None:
        """New timeouts and status interval; open flows are kept."""
        self._check(lib.sensor_reconfigure(self._h, native_config(flows)))

    def filenos(self) -> list[int]:
        """Selectable descriptors of the live sources (for select/poll)."""
        return [lib.sensor_fileno(self._h, i) for i in range(lib.sensor_source_count(self._h))]

    def source_stats(self) -> list[dict[str, int]]:
        """Per-interface counters: packets, bytes and libpcap's received/dropped figures."""
        out = []
        ss = ffi.new("sensor_source_stats_t *")
        for i in range(lib.sensor_source_count(self._h)):
            lib.sensor_source_stats(self._h, i, ss)
            out.append({"packets": ss.packets, "bytes": ss.bytes, "pcap_recv": ss.pcap_recv,
                        "pcap_drop": ss.pcap_drop, "pcap_ifdrop": ss.pcap_ifdrop})
        return out

    def stats(self) -> dict[str, Any]:
        """Counters of this source: packets, bytes, decode errors by reason, flows, drops."""
        lib.sensor_get_stats(self._h, self._stats)
        s = self._stats
        return {
            "packets": s.packets, "bytes": s.bytes,
            "decode_errors": {name: s.decode_errors[i] for i, name in enumerate(DECODE_ERRORS)},
            "flows_active": s.flows_active, "flows_created": s.flows_created,
            "flows_ended": s.flows_ended, "evicted": s.flows_evicted,
            "flows_capacity": s.flows_capacity, "records": s.records,
            "frags_tracked": s.frags_tracked, "frags_orphaned": s.frags_orphaned,
            "gap_acks": s.gap_acks, "pcap_recv": s.pcap_recv, "pcap_drop": s.pcap_drop,
            "pcap_ifdrop": s.pcap_ifdrop, "last_packet_us": s.last_packet_us,
            "warnings": s.warnings,
        }

    @property
    def last_packet_us(self) -> int:
        lib.sensor_get_stats(self._h, self._stats)
        return self._stats.last_packet_us


def _addr(kind: int, raw: bytes) -> str:
    if kind == ADDR_IP4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if kind == ADDR_IP6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return raw[:6].hex(":")


def _tcp_flags(bits: int) -> str:
    return "".join(c for i, c in enumerate(TCP_FLAG_LETTERS) if bits >> i & 1)


def _icmp_state(proto: int, icmp_type: int, code: int) -> str:
    if proto == 1:
        if icmp_type == 3:
            return ICMP4_UNREACH.get(code, "UNR")
        return ICMP4_NAMES.get(icmp_type, "UNK")
    return ICMP6_NAMES.get(icmp_type, "UNK")


def _flgs(flgs: int, has_mac: bool) -> str:
    """Argus-style flag letters: position 1 encapsulation ('e' Ethernet, '*' tagged/labelled/PPPoE),
    2 'U' (an ICMP unreachable quoted the flow), 4 'F' fragments / 'f' orphan fragments,
    5 'g' sequence gaps, 6 's' retransmissions."""
    encap = "*" if flgs & (FLG_VLAN | FLG_MPLS | FLG_PPPOE) else "e" if has_mac else " "
    return "".join((
        " ", encap, "U" if flgs & FLG_UNREACH else " ", " ",
        "f" if flgs & FLG_ORPHAN else "F" if flgs & FLG_FRAG else " ",
        "g" if flgs & FLG_GAP else " ", "s" if flgs & FLG_RETRANS else " ", " ", " "))


def community_id(proto: int, kind: int, saddr: bytes, daddr: bytes, sport: int | None,
                 dport: int | None, seed: int = 0, icmp_code: int = 0) -> str | None:
    """Community ID v1 (corelight/community-id-spec) of an IP flow; None for non-IP flows.

    ICMP/ICMPv6 records are turned back into what the spec hashes, the message as sent: a paired
    type with its counterpart as the "ports" (ordered like ports), any other type with its code
    (icmp_code; the record's dport holds the quoted datagram's port for errors), not reordered. A
    record of replies alone has the requester as saddr and the reply's type as sport."""
    if kind == ADDR_MAC or proto > 255:
        return None
    n = 4 if kind == ADDR_IP4 else 16
    a, b = saddr[:n], daddr[:n]
    ported = proto in PORTED_PROTOS and sport is not None
    sp, dp = (sport or 0), (dport or 0)
    ordered = True
    if proto in (1, 58) and ported:
        pairs = ICMP_PAIRS[proto]
        if sp in ICMP_REPLIES[proto]:       # sent by daddr: its request type is saddr's "port"
            sp, dp = pairs[sp], sp
        elif sp in pairs:
            dp = pairs[sp]
        else:
            dp, ordered = icmp_code, False
    if ordered and (a, sp) > (b, dp):
        a, b, sp, dp = b, a, dp, sp
    data = struct.pack("!H", seed) + a + b + struct.pack("!BB", proto, 0)
    if ported:
        data += struct.pack("!HH", sp, dp)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def _raw_names() -> list[str]:
    """The names of a raw tuple's items: sensor_flow_t's members, ``pkts_0`` for ``pkts[0]``."""
    names = []
    for name, code in RECORD_LAYOUT:
        count = len(struct.unpack("<" + code, bytes(struct.calcsize("<" + code))))
        names += [name] if count == 1 else [f"{name}_{i}" for i in range(count)]
    return names


# What several columns' values look at, worked out once per record (names: see record.py).
_RECORD_FACTS = """\
    ip = addr_type != ADDR_MAC
    ported = not ip or (proto in PORTED_PROTOS)
    has_mac = mac_0 != b"\\0" * 6 or mac_1 != b"\\0" * 6
    sip = ip and proto != 2054
    tcp = proto == 6 and ip
"""


def _compile_to_record() -> Callable[[tuple, str], dict[str, Any]]:
    """``to_record`` generated from record.COLUMNS: one dict display over the unpacked struct, as
    fast as a hand-written one (it runs once per record on the Python paths)."""
    values = "".join(f"        {c.name!r}: {c.value},\n" for c in _record.COLUMNS)
    src = (f"def to_record(r, srcid):\n    ({', '.join(_raw_names())},) = r\n{_RECORD_FACTS}"
           f"    return {{\n{values}    }}\n")
    exec(compile(src, "<record.COLUMNS: to_record>", "exec"), globals())
    fn = globals()["to_record"]
    fn.__doc__ = "Turn one raw sensor_flow_t tuple into a record dict keyed by Argus field names."
    return fn


to_record = _compile_to_record()


class ArchiveStore:
    """Inserts packed records into one archive's ``flows`` from C (native/store.c), with exactly
    the values :func:`to_record` gives them, on a connection of its own.

    appliance/archive.py owns the schema and the transactions: ``execute("BEGIN IMMEDIATE")``,
    :meth:`insert`, :meth:`set_info`, ``execute("COMMIT")``. Failures raise
    ``sqlite3.OperationalError`` with SQLite's message (``errno`` set from the OS when it has one).

    :raises sqlite3.OperationalError: when the file cannot be opened as an archive.
    """

    def __init__(self, path: str | os.PathLike[str], srcid: str):
        err = ffi.new("char[]", lib.SENSOR_ERRBUF_SIZE)
        out = ffi.new("sensor_store_t **")
        if lib.sensor_store_open(os.fsencode(path), srcid.encode(), err, out) < 0:
            raise sqlite3.OperationalError(ffi.string(err).decode(errors="replace"))
        self._h = out[0]

    def _check(self, rc: int) -> None:
        if rc:
            exc = sqlite3.OperationalError(ffi.string(lib.sensor_store_error(self._h)).decode(errors="replace"))
            exc.errno = lib.sensor_store_system_errno(self._h)   # type: ignore[attr-defined]
            exc.sqlite_errorcode = rc       # type: ignore[attr-defined]  as the sqlite3 module's errors
            raise exc

    def execute(self, sql: str) -> None:
        """Run a statement without parameters or rows (BEGIN IMMEDIATE, COMMIT, ROLLBACK)."""
        self._check(lib.sensor_store_exec(self._h, sql.encode()))

    def insert(self, packed: bytes) -> None:
        """Insert the records in ``packed`` (concatenated sensor_flow_t, as ``drain_packed``)."""
        n = len(packed) // RECORD_SIZE
        if n:
            self._check(lib.sensor_store_insert(self._h, ffi.from_buffer("sensor_flow_t[]", packed), n))

    def set_info(self, key: str, json_value: str) -> None:
        """INSERT OR REPLACE one ``archive_info`` row."""
        self._check(lib.sensor_store_set_info(self._h, key.encode(), json_value.encode()))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._h is not None:
            lib.sensor_store_close(self._h)
            self._h = None


def unpack_records(packed: bytes, srcid: str) -> list[dict[str, Any]]:
    """Record dicts of packed records (for exporters fed by the recorder)."""
    return [to_record(r, srcid) for r in RECORD.iter_unpack(packed)]


def meter_file(path: str, config: Config | None = None,
               stats_out: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Meter one capture file and yield its records (ending with every flow still open at the end).

    :param stats_out: filled with the source's counters (see :meth:`Capture.stats`) when done.
    :raises CaptureError: when the file cannot be opened, or is truncated or corrupt; in the latter
        case only after every record of what could be read has been yielded.
    Example: ``for rec in meter_file("x.pcap"): print(rec["saddr"])``
    """
    config = config or Config()
    srcid = config.sensor.id
    for raw in meter_file_raw(path, config.flows, stats_out):
        yield to_record(raw, srcid)


def meter_file_raw(path: str, flows: FlowsConfig | None = None,
                   stats_out: dict[str, Any] | None = None, count_only: bool = False) -> Iterator[Any]:
    """Like :func:`meter_file`, yielding raw tuples (or, with count_only, per-batch record counts)."""
    error = None
    with Capture.open_file(path, flows) as cap:
        drain = cap.drain_count if count_only else cap.drain_raw
        while True:
            try:
                rc = cap.poll(POLL_PACKETS)
            except CaptureError as exc:
                error = exc
                break
            if rc == lib.SENSOR_EOF:
                break
            if count_only:
                yield drain(cap.last_packet_us)
            else:
                yield from drain(cap.last_packet_us)
        cap.end_all(lib.SENSOR_CAUSE_SHUTDOWN)
        if count_only:
            yield drain(cap.last_packet_us)
        else:
            yield from drain(cap.last_packet_us)
        if stats_out is not None:
            stats_out.update(cap.stats())
    if error is not None:
        raise error


def check_bpf(expr: str) -> str | None:
    """libpcap's error message for a BPF filter that does not compile (for Ethernet), or None."""
    errbuf = ffi.new("char[]", lib.SENSOR_ERRBUF_SIZE)
    if lib.sensor_check_filter(expr.encode(), errbuf) < 0:
        return ffi.string(errbuf).decode(errors="replace")
    return None


# --- text lines in C (native/format.c) ---------------------------------------------------------

# Record key -> SENSOR_FIELD_* for every value sensor_format prints (aliases share their key's id):
# the columns record.py marks c_prints, and racluster's trans.
FORMAT_FIELDS: dict[str, int] = {
    key: getattr(lib, "SENSOR_FIELD_" + key.upper())
    for key in [c.name for c in _record.COLUMNS if c.c_prints] + ["trans"]
}
PAD_NONE, PAD_RIGHT, PAD_LEFT = lib.SENSOR_PAD_NONE, lib.SENSOR_PAD_RIGHT, lib.SENSOR_PAD_LEFT
SEP_DELIM, SEP_PORT = lib.SENSOR_SEP_DELIM, lib.SENSOR_SEP_PORT
FORMAT_BUFFER = 512 * 1024            # bytes of text per sensor_format call (one buffer, reused)


class LineFormat:
    """How ``sensor_format`` prints records: a ``sensor_format_spec_t`` built once.

    :param columns: per column ``(record key, PAD_*, SEP_*, width)``.
    :param delimiter: bytes between columns (``b" "`` for aligned columns), at most 8.
    :param srcid: the ``srcid`` value (printable ASCII without blanks, at most 64 bytes).
    :raises ValueError: when C cannot print this (unknown key, too many columns, odd options).
    Example: ``LineFormat([("saddr", PAD_NONE, SEP_DELIM, 0)], numeric=1, delimiter=b",")``
    """

    def __init__(self, columns: list[tuple[str, int, int, int]], numeric: int = 0,
                 utime: bool = False, zflags: str | None = None, delimited: bool = False,
                 rstrip: bool = False, delimiter: bytes = b" ", srcid: str = ""):
        spec = ffi.new("sensor_format_spec_t *")
        if not 1 <= len(columns) <= lib.SENSOR_FORMAT_MAX_COLUMNS:
            raise ValueError(f"{len(columns)} columns")
        if zflags not in (None, "s", "d", "b") or not 0 <= numeric <= 255:
            raise ValueError("-Z or -n out of range")
        raw_id = srcid.encode("ascii", "replace")
        if not srcid.isascii() or not srcid.isprintable() or any(c.isspace() for c in srcid) \
                or len(raw_id) > len(spec.srcid) or len(delimiter) > len(spec.delim):
            raise ValueError("srcid or delimiter not printable in C")
        for i, (key, pad, sep, width) in enumerate(columns):
            if key not in FORMAT_FIELDS or (pad != PAD_NONE and not 1 <= width <= 0xFFFF):
                raise ValueError(f"column {key!r} not printable in C")
            col = spec.column[i]
            col.field, col.pad, col.sep, col.width = FORMAT_FIELDS[key], pad, sep, width
        spec.ncolumns = len(columns)
        spec.flags = ((lib.SENSOR_FMT_UTIME if utime else 0)
                      | (lib.SENSOR_FMT_DELIMITED if delimited else 0)
                      | (lib.SENSOR_FMT_RSTRIP if rstrip else 0))
        spec.numeric = numeric
        spec.zflags = ord(zflags) if zflags else 0
        spec.delim_len, spec.srcid_len = len(delimiter), len(raw_id)
        ffi.memmove(spec.delim, delimiter, len(delimiter))
        ffi.memmove(spec.srcid, raw_id, len(raw_id))
        self.spec = spec
        self.srcid = srcid


def format_file(path: str, fmt: LineFormat, room: Callable[[], int] | None = None,
                flows: FlowsConfig | None = None,
                stats_out: dict[str, Any] | None = None) -> Iterator[tuple[int, Any]]:
    """Meter one capture file and yield its records as text lines printed by C, in order:
    ``(k, view)`` for k >= 1 whole lines in ``view`` (a buffer reused after the next step), and
    ``(0, raw)`` for a record C leaves to Python (a raw tuple for :func:`to_record`).

    :param room: called before each chunk: at most that many records in it (0 = no limit).
    :param stats_out: filled with the source's counters when done (see :meth:`Capture.stats`).
    :raises CaptureError: as :func:`meter_file`, after every record that could be read.
    Example: ``for k, item in format_file("x.pcap", fmt): ...``
    """
    text = ffi.new("char[]", FORMAT_BUFFER)
    view = memoryview(ffi.buffer(text))
    used = ffi.new("size_t *")
    spec = fmt.spec
    error = None
    with Capture.open_file(path, flows) as cap:
        h, recs = cap._h, cap._out
        done = False
        while not done:
            try:
                done = cap.poll(POLL_PACKETS) == lib.SENSOR_EOF
            except CaptureError as exc:
                error, done = exc, True
            if done:
                cap.end_all(lib.SENSOR_CAUSE_SHUTDOWN)
            now = cap.last_packet_us
            while True:
                n = lib.sensor_drain(h, recs, DRAIN_BATCH, now)
                i = 0
                while i < n:
                    limit = n - i
                    if room is not None:
                        limit = min(limit, room() or limit)
                    k = lib.sensor_format(recs + i, limit, spec, text, FORMAT_BUFFER, used)
                    if k:
                        yield k, view[: used[0]]
                        i += k
                    else:      # left to Python (or one line longer than the whole buffer)
                        yield 0, RECORD.unpack_from(cap._view, i * RECORD_SIZE)
                        i += 1
                if n < DRAIN_BATCH:
                    break
        if stats_out is not None:
            stats_out.update(cap.stats())
    if error is not None:
        raise error


def format_records(raw: bytes, fmt: LineFormat) -> tuple[int, bytes]:
    """Run ``sensor_format`` over packed records (``RECORD`` layout, as many as fit in ``raw``):
    how many leading records it printed, and their lines (for tests and tools).

    Example: ``k, text = format_records(RECORD.pack(*raw), fmt)``
    """
    n = len(raw) // RECORD_SIZE
    recs = ffi.new("sensor_flow_t[]", max(n, 1))
    ffi.memmove(recs, raw, n * RECORD_SIZE)
    size = max(FORMAT_BUFFER, n * 4096)
    text = ffi.new("char[]", size)
    used = ffi.new("size_t *")
    k = lib.sensor_format(recs, n, fmt.spec, text, size, used)
    return k, ffi.buffer(text, used[0])[:]


class ClusterDeclined(Exception):
    """The native clusterer cannot print exactly what the Python one would (says why)."""


class ArchiveCluster:
    """racluster ``-m`` over archive files, merged and printed by ``sensor_cluster_*`` (cluster.c).

    A context manager: ``read`` each file's statement in order, ``finish`` once, then ``lines``.
    Every step raises ``ClusterDeclined`` where C would not print what ``cluster.Clusterer`` and
    ``output.TextWriter`` print (nothing has been printed then; the caller clusters in Python).

    :param keys: ``(record key, prefix or None)`` per ``-m`` key, as ``cluster.parse_keys`` gives.
    :param fields: the record keys each statement selects, in its column order.
    :param norep: ``-M norep``: trans prints as 0.
    Example: ``with ArchiveCluster([("saddr", 24)], ["saddr", "stime", "ltime"]) as c: ...``
    """

    def __init__(self, keys: Sequence[tuple[str, int | None]], fields: Sequence[str],
                 norep: bool = False):
        try:
            key_ids = [FORMAT_FIELDS[k] for k, _ in keys]
            field_ids = [FORMAT_FIELDS[k] for k in fields]
        except KeyError as e:
            raise ClusterDeclined(f"{e.args[0]!r} is not a field C merges") from None
        prefixes = [-1 if p is None else p for _, p in keys]
        if len(keys) > lib.SENSOR_CLUSTER_MAX_KEYS or any(not -1 <= p <= 128 for p in prefixes):
            raise ClusterDeclined("too many keys or a bad mask")
        errbuf = ffi.new("char[]", lib.SENSOR_ERRBUF_SIZE)
        out = ffi.new("sensor_cluster_t **")
        rc = lib.sensor_cluster_open(ffi.new("uint8_t[]", key_ids or [0]),
                                     ffi.new("int16_t[]", prefixes or [0]), len(key_ids),
                                     ffi.new("uint8_t[]", field_ids or [0]), len(field_ids),
                                     int(norep), errbuf, out)
        if rc < 0:
            raise ClusterDeclined(ffi.string(errbuf).decode(errors="replace"))
        self._h = out[0]

    def __enter__(self) -> ArchiveCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Free the handle (idempotent)."""
        if self._h is not None:
            lib.sensor_cluster_close(self._h)
            self._h = None

    def _check(self, rc: int) -> int:
        if rc < 0:
            raise ClusterDeclined(ffi.string(lib.sensor_cluster_error(self._h)).decode(errors="replace"))
        return rc

    def read(self, uri: str, sql: str, params: Sequence[Any]) -> None:
        """Merge the rows ``sql`` (with ``params``) selects from the archive at ``uri`` (read-only)."""
        cparams = ffi.new("sensor_sql_param_t[]", max(len(params), 1))
        keep = []                                  # the text buffers live until the call returns
        for p, value in zip(cparams, params):
            if value is None:
                p.type = lib.SENSOR_PARAM_NULL
            elif isinstance(value, int) and -2**63 <= value < 2**63:
                p.type, p.i = lib.SENSOR_PARAM_INT, value
            elif isinstance(value, float):
                p.type, p.d = lib.SENSOR_PARAM_REAL, value
            elif isinstance(value, str) and "\0" not in value:
                keep.append(ffi.new("char[]", value.encode()))
                p.type, p.text = lib.SENSOR_PARAM_TEXT, keep[-1]
            else:
                raise ClusterDeclined(f"a parameter C does not bind: {value!r}")
        self._check(lib.sensor_cluster_read(self._h, uri.encode(), sql.encode(), cparams, len(params)))

    def finish(self, fmt: LineFormat) -> int:
        """Sort the clusters and check each prints in C with ``fmt``: how many lines follow."""
        return self._check(lib.sensor_cluster_finish(self._h, fmt.spec))

    def lines(self) -> Iterator[Any]:
        """The text, a buffer of whole lines at a time (each valid until the next step)."""
        text = ffi.new("char[]", FORMAT_BUFFER)
        view = memoryview(ffi.buffer(text))
        used = ffi.new("size_t *")
        while self._check(lib.sensor_cluster_format(self._h, text, FORMAT_BUFFER, used)):
            yield view[: used[0]]
