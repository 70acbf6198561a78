"""The field registry: record keys, Argus labels, ra column widths, formatters, the whitelist.

The record's own fields come from appliance/record.py's column table; racluster's ``trans`` and
Argus's aliases are added here, and the name tables are read from the native module.

Every identifier that reaches SQL, ``-s``, ``-m`` or a filter comparison comes from ``FIELDS``.
Labels and widths were read off Debian's argus-client 3.0.8 (``ra -X -c , -L0 -s FIELD``).

Example::

    fields = parse_field_list(["stime", "proto", "+srcid"])        # defaults are replaced by stime proto
    fmt = [formatter(f, FormatOptions(numeric=1, utime=True)) for f in fields]
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import capture as _capture
from . import record as _record

Record = Mapping[str, Any]


class FieldError(ValueError):
    """An unknown field name or a malformed ``-s``/``-m`` item."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One printable field.

    ``name`` is what the analyst types (an Argus ``-s`` name or alias), ``key`` the record key it
    reads, ``kind`` picks the formatter, ``width`` is ra's text column width. ``stored`` says the key
    is a column of the record (and of archive tables), so SQL may name it. ``descending`` is rasort's
    order for the field (volumes sort largest first, like Argus).
    """

    name: str
    key: str
    label: str
    kind: str
    width: int
    stored: bool = True
    descending: bool = False
    width_set: bool = False   # an explicit ``field:width`` from the command line
    centred: bool = False     # ra centres this label in its column (only Seq)


def _f(name, label, kind, width, key=None, **kw):
    return Field(name=name, key=key or name, label=label, kind=kind, width=width, **kw)


def _column_field(c: _record.Column) -> Field:
    return Field(name=c.name, key=c.name, label=c.label, kind=c.kind, width=c.width,
                 descending=c.descending, centred=c.centred)


# The record's columns (appliance/record.py), then what racluster adds and Argus's aliases.
_ALL = [_column_field(c) for c in _record.FIELD_COLUMNS] + [
    _f("trans", "Trans", "trans", 6, stored=False, descending=True),
    # Argus aliases: same record key, Argus's own label for that name.
    _f("svid", "sVid", "int", 6, key="svlan"),
    _f("dvid", "dVid", "int", 6, key="dvlan"),
    _f("sloss", "SrcLoss", "int", 8, key="sretrans", descending=True),
    _f("dloss", "DstLoss", "int", 8, key="dretrans", descending=True),
]

FIELDS: dict[str, Field] = {f.name: f for f in _ALL}

# Keys of a session record, in the record's canonical order (the contract with appliance.capture).
RECORD_KEYS: tuple[str, ...] = tuple(c.name for c in _record.FIELD_COLUMNS)

# The identifiers SQL may use: stored record keys only.
WHITELIST: frozenset[str] = frozenset(RECORD_KEYS)

# Keys whose values are numbers (filter comparisons and sorting accept these).
NUMERIC_KEYS: frozenset[str] = frozenset(
    f.key for f in _ALL if f.kind in ("int", "float", "time", "proto", "port", "trans")
)

# ra's columns when no -s is given (ra -X, Argus 3.0.8).
DEFAULT_FIELDS: tuple[str, ...] = (
    "stime", "flgs", "proto", "saddr", "sport", "dir", "daddr", "dport", "pkts", "bytes", "state",
)

# IP protocol names as ra prints them (Argus's table, the common part: native/format.c's).
IP_PROTO_NAMES: dict[int, str] = _capture.name_table(_capture.lib.sensor_ip_proto_names)
# Ethertype names for non-IP flows (proto holds the ethertype; 0 is 802.3 LLC).
ETHER_PROTO_NAMES: dict[int, str] = _capture.name_table(_capture.lib.sensor_ether_proto_names)

# LLC SAP names ra prints in the port columns of 802.3 flows (without -n).
LLC_SAP_NAMES: dict[int, str] = _capture.name_table(_capture.lib.sensor_llc_sap_names)

# Argus's order of TCP flag letters for -Z (ra(1): F S R P A U 7 8); E/C are ECE/CWR aliases.
_TCP_FLAG_ORDER = _capture.ffi.string(_capture.lib.sensor_argus_flag_letters).decode()
_TCP_FLAG_ALIAS = {t: a for t, a in zip(_capture.TCP_FLAG_LETTERS, _TCP_FLAG_ORDER) if t != a}


def resolve(name: str) -> Field:
    """Return the field called ``name`` (an Argus name or alias).

    :raises FieldError: for an unknown name.
    """
    try:
        return FIELDS[name]
    except KeyError:
        raise FieldError(f"unknown field {name!r} (known: {', '.join(sorted(FIELDS))})") from None


def parse_field_item(item: str) -> Field:
    """Parse one ``-s`` item ``name`` or ``name:width`` into a Field.

    :raises FieldError: unknown name or a width that is not a positive integer.
    """
    name, _, width = item.partition(":")
    field = resolve(name)
    if width:
        if not width.isdigit() or int(width) < 1:
            raise FieldError(f"field width must be a positive integer: {item!r}")
        field = dataclasses.replace(field, width=int(width), width_set=True)
    return field


def parse_field_list(items: Iterable[str], defaults: Iterable[str] = DEFAULT_FIELDS) -> list[Field]:
    """Resolve an Argus ``-s`` list: plain names replace the defaults, ``+f``/``+Nf`` add, ``-f`` remove.

    ``+Nf`` inserts at 0-based position N, as ra does (``-s +2srcid`` puts srcid third).

    :param items: the ``-s`` arguments in command-line order.
    :param defaults: the list that ``+``/``-`` items modify when no plain name is given.
    :raises FieldError: for an unknown field or a malformed item.
    """
    items = list(items)
    replace = any(not it.startswith(("+", "-")) for it in items)
    fields = [] if replace else [resolve(n) for n in defaults]
    for item in items:
        if item.startswith("-"):
            gone = resolve(item[1:].partition(":")[0]).name
            fields = [f for f in fields if f.name != gone]
        elif item.startswith("+"):
            digits = len(item) - len(item[1:].lstrip("0123456789")) - 1
            field = parse_field_item(item[1 + digits:])
            pos = int(item[1:1 + digits]) if digits else len(fields)
            fields.insert(min(pos, len(fields)), field)
        else:
            fields.append(parse_field_item(item))
    return fields


# --- formatting -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FormatOptions:
    """How values print: ``numeric`` is the -n count, ``utime`` is -u, ``zflags`` is -Z's s|d|b."""

    numeric: int = 0
    utime: bool = False
    zflags: str | None = None
    delimited: bool = False   # -c given: Argus pads only Dir and Flgs


def is_mac(addr: str) -> bool:
    """True for a colon-separated 6-byte MAC address such as ``00:30:96:e6:fc:39``."""
    return len(addr) == 17 and addr.count(":") == 5 and "::" not in addr


def address_family(addr: str | None) -> int:
    """4 for dotted IPv4, 6 for IPv6, 0 for a MAC (non-IP flows) or nothing."""
    if not addr:
        return 0
    if "." in addr:
        return 4
    if ":" in addr and not is_mac(addr):
        return 6
    return 0


def is_ether_proto(proto: int, saddr: str | None) -> bool:
    """True when ``proto`` holds an ethertype (a non-IP flow) rather than an IP protocol."""
    return proto > 255 or (proto == 0 and saddr is not None and is_mac(saddr))


def proto_name(proto: int | None, saddr: str | None = None, numeric: int = 0) -> str:
    """ra's protocol name (``tcp``, ``ipv6-icmp``, ``arp``, ``llc``); like ra, ``unas`` for an
    IP protocol without a name and ``unknown`` (with -n: the number) for an unnamed ethertype."""
    if proto is None:
        return ""
    if is_ether_proto(proto, saddr):
        return ETHER_PROTO_NAMES.get(proto, str(proto) if numeric else "unknown")
    return IP_PROTO_NAMES.get(proto, "unas")


PROTO_NUMBERS: dict[str, int] = {v: k for k, v in IP_PROTO_NAMES.items() if k}
PROTO_NUMBERS.update({"icmp6": 58, "icmpv6": 58, "arp": 0x0806, "rarp": 0x8035})

_services: dict[tuple[int, int], str] = {}


def port_name(port: int, proto: int) -> str:
    """The service name for a TCP/UDP port (``domain``, ``http``), else the number."""
    key = (port, proto)
    name = _services.get(key)
    if name is None:
        name = str(port)
        if proto in (6, 17):
            try:
                name = socket.getservbyport(port, "tcp" if proto == 6 else "udp")
            except (OSError, OverflowError):
                pass
        _services[key] = name
    return name


def argus_tcp_flags(letters: str | None) -> str:
    """Reorder TCP flag letters into Argus's -Z order (``SPA``, ``FSPA``)."""
    if not letters:
        return ""
    have = {_TCP_FLAG_ALIAS.get(c, c) for c in letters}
    return "".join(c for c in _TCP_FLAG_ORDER if c in have)


def _clock_formatter() -> Callable[[float], str]:
    """Local ``%H:%M:%S.%f`` like ra's default RA_TIME_FORMAT, cached per second."""
    last = [None, ""]

    def fmt(t):
        if t is None:
            return ""
        us = round(t * 1_000_000)
        sec, frac = divmod(us, 1_000_000)
        if sec != last[0]:
            last[0] = sec
            last[1] = time.strftime("%H:%M:%S", time.localtime(sec))
        return f"{last[1]}.{frac:06d}"

    return fmt


def _opt(fn):
    return lambda v: "" if v is None else fn(v)


def formatter(field: Field, opts: FormatOptions) -> Callable[[Record], str]:
    """Build the function that turns a record into this field's text (no padding except Dir/Flgs).

    Built once per field and run per record, so everything that does not depend on the record is
    decided here.
    """
    key, kind = field.key, field.kind
    if kind == "time":
        conv = (lambda t: "" if t is None else f"{t:.6f}") if opts.utime else _clock_formatter()
        return lambda r: conv(r[key])
    if kind == "float":
        return lambda r: "" if r[key] is None else f"{r[key]:.6f}"
    if kind == "int":
        return lambda r: "" if r[key] is None else str(r[key])
    if kind == "trans":
        return lambda r: str(r.get("trans", 1))
    if kind == "str":
        return lambda r: r[key] or ""
    if kind == "addr":
        return lambda r: r[key] or ""
    if kind == "proto":
        if opts.numeric >= 2:
            return lambda r: "" if r["proto"] is None else str(r["proto"])
        n = opts.numeric
        return lambda r: proto_name(r["proto"], r["saddr"], n)
    if kind == "port":
        named = opts.numeric == 0

        def port(r):
            v = r[key]
            if v is None:
                return ""
            p = r["proto"]
            if p == 1:
                return f"0x{v:04x}"
            if named:
                if p is not None and is_ether_proto(p, r["saddr"]):
                    return LLC_SAP_NAMES.get(v, "") if p == 0 else ""   # as ra does
                return port_name(v, p)
            return str(v)
        return port
    if kind == "dir":
        return lambda r: (r["dir"] or "").rjust(5)
    if kind == "flgs":
        pad = 10 if opts.delimited else 9
        return lambda r: (r["flgs"] or "").rstrip().ljust(pad)
    if kind == "state":
        if opts.zflags:
            z = opts.zflags

            def state(r):
                if r["proto"] != 6:
                    return r["state"] or ""
                s, d = argus_tcp_flags(r["sflags"]), argus_tcp_flags(r["dflags"])
                return s if z == "s" else d if z == "d" else f"{s}_{d}"
            return state
        return lambda r: r["state"] or ""
    raise AssertionError(f"no formatter for kind {kind!r}")  # pragma: no cover


def keys_read(fields: Sequence[Field], opts: FormatOptions) -> frozenset[str]:
    """The record keys that printing ``fields`` reads (queries may compute only these)."""
    keys = {f.key for f in fields} | {"proto", "saddr", "trans"}    # ports and protocols look at these
    if opts.zflags:
        keys |= {"sflags", "dflags"}
    return frozenset(keys)


def sort_value(field: Field) -> Callable[[Record], Any]:
    """A key function ordering records by ``field`` (addresses numerically, None last)."""
    key = field.key
    if field.kind == "trans":
        return lambda r: (0, -r.get("trans", 1))
    if field.kind == "addr":
        def addr(r):
            # inet_pton (C) rather than ipaddress: racluster sorts hundreds of thousands of keys.
            v = r[key]
            if v is None:
                return (2, 0, b"")
            try:
                return (0, 4, socket.inet_pton(socket.AF_INET, v))
            except OSError:
                pass
            try:
                return (0, 6, socket.inet_pton(socket.AF_INET6, v))
            except OSError:
                return (1, 0, v)
        return addr
    sign = -1 if field.descending else 1
    if field.key in NUMERIC_KEYS:
        return lambda r: (1, 0) if r[key] is None else (0, sign * r[key])
    return lambda r: (1, "") if r[key] is None else (0, r[key])
