"""Readers of IDS alert files: each yields ``alert_types.Alert``.

Formats, and where each detail comes from (the formats' documentation, or the code that writes
them where the documentation is silent):

``eve``
    Suricata EVE JSON, one object per line (Suricata user guide, "Eve JSON Format": common
    section and "Event type: Alert"). Only ``event_type: "alert"`` is an alert; other events are
    skipped, on sight of their ``event_type`` (written before any nested object) without
    decoding the rest of the line: they are most of an eve.json. ``timestamp`` is ISO 8601 with
    a UTC offset (``+0100``; ``+01:00`` and ``Z`` taken too; none means UTC). ``src_ip src_port
    dest_ip dest_port proto flow_id community_id app_proto``;
    ``alert.{gid,signature_id,rev,signature,category,severity,action}``: category is the
    classification and severity the priority. ICMP alerts carry ``icmp_type``/``icmp_code``
    instead of ports.
``snort3-json``
    Snort 3 ``alert_json`` (Snort 3 manual, alert_json module; src/loggers/alert_json.cc): one
    object per line, any subset of its fields, no ``event_type``. ``timestamp`` is
    ``[YY/]MM/DD-HH:MM:SS.ffffff`` (utils ts_print: the year only with -y; older Snort 3 printed
    MM/DD/YY), ``seconds`` Unix seconds, ``src_addr``/``src_port`` or ``src_ap`` ("addr:port",
    IPv6 without brackets, port 0 when the packet has none), ``gid sid rev`` or ``rule``
    ("gid:sid:rev"), ``msg class priority action service``, ``proto`` the packet type (``TCP
    UDP ICMP IP``...). A line needs a time, both addresses and the rule.
``snort3-csv``
    Snort 3 ``alert_csv`` with its default fields, ``timestamp, pkt_num, proto, pkt_gen,
    pkt_len, dir, src_ap, dst_ap, rule, action`` joined by ", " (Snort 3 manual, alert_csv;
    src/loggers/alert_csv.cc). No message: it comes from the sid map, else "".
``fast``
    ``alert_fast`` of Snort 2 (manual, "alert_fast"; src/log.c), Snort 3 (alert_fast.cc,
    log_text.cc) and Suricata's fast.log (alert-fastlog.c)::

        TIME [action] [**] [gid:sid:rev] msg [**] [Classification: c] [Priority: n] {PROTO} a:p -> b:p

    TIME is ``MM/DD-…`` (no year), ``MM/DD/YY-…`` (Snort 2 -y), ``YY/MM/DD-…`` (Snort 3 -y) or
    ``MM/DD/YYYY-…`` (Suricata). Snort 3 quotes the message and may add ``[AppID: x]``; Suricata
    writes ``[Drop]``/``[wDrop]``, Snort 3 ``[drop]``… before ``[**]``. Addresses print without
    brackets (``2001:db8::1:80``), and Snort prints no ports but for TCP and UDP, while Suricata
    always prints them (ICMP type and code).
``unified2``
    Snort 2 binary events (Snort 2 manual, "unified2"; Snort 3 src/log/unified2.h), decoded with
    ``idstools.unified2``: record header (type, length: big-endian u32), event types 7 (IPv4),
    72 (IPv6), 104/105 (v2: + MPLS label, VLAN) and 114 (Snort 3). Packet and extra-data records
    are skipped. ``raw`` is a fixed text rendering of the event's fields.

Lines are UTF-8 (invalid bytes replaced); a line over ``MAX_LINE`` bytes is a bad line, skipped
without being held in memory. Snort writes local time unless run with ``-U`` (Suricata's fast.log
always does): alerts are read as UTC, as flowtap's sensors run. Times without a year take
``year``, else the year that puts them inside ``span`` (the archives' recorded span, a day's
slack either side), else the latest year not in the future; ``ReadStats.years`` says which and
how. The message comes from the sid map when the alert has none.

Example::

    stats = ReadStats()
    with open("/var/log/suricata/eve.json", "rb") as f:
        for alert in read(f, stats=stats):
            print(alert.time, alert.msg)
    print(stats.read, stats.bad, stats.first_bad)
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import io
import json
import pathlib
import pickle
import re
import struct
import time as _time
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable

import orjson

from .alert_types import PORT_PROTOS, Alert, AlertError, canonical_address, proto_number, row_id, row_of

try:
    from . import _alertparse           # native/alertparse.c: EVE alert lines to rows, in C
except ImportError:                     # not built: every line is read in Python, the same rows
    _alertparse = None

FORMATS = ("eve", "snort3-json", "snort3-csv", "fast", "unified2")
MAX_LINE = 1 << 20          # longer lines are bad lines, skipped without being kept in memory
HEAD = 1 << 16              # bytes read() looks at to detect the format
U32 = 0xFFFFFFFF
_MAX_FLOW_ID = 2**63 - 1    # EVE's flow_id: a signed 64-bit number
DAY = 86400
_EPOCH = datetime.date(1970, 1, 1).toordinal()
_MAX_TIME = 253402300800    # 10000-01-01T00:00:00Z


@dataclasses.dataclass
class ReadStats:
    """What a read() saw; ``years`` maps each year given to a year-less time to how it was chosen."""

    read: int = 0
    skipped: int = 0
    bad: int = 0
    first_bad: tuple[int, str] | None = None
    years: dict[int, str] = dataclasses.field(default_factory=dict)

    def note_bad(self, number: int, reason: str, text: str) -> None:
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = (number, f"{reason}: {text[:120]}")


# --- times --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to the date (cached: a log's lines share a few dates)."""
    try:
        return datetime.date(year, month, day).toordinal() - _EPOCH
    except ValueError:
        raise AlertError(f"no such date {year:04d}-{month:02d}-{day:02d}") from None


def _utc(year: int, month: int, day: int, hms: int, us: int) -> float:
    """Unix seconds of a UTC date, seconds into the day and microseconds."""
    if not 1970 <= year <= 9999:
        raise AlertError(f"year {year} out of range")
    return (_days(year, month, day) * DAY + hms) + us / 1e6


def _hms(h: str, m: str, s: str) -> int:
    hour, minute, second = int(h), int(m), int(s)
    if hour > 23 or minute > 59 or second > 59:
        raise AlertError(f"no such time {h}:{m}:{s}")
    return hour * 3600 + minute * 60 + second


def _micro(frac: str | None) -> int:
    return int((frac + "00000")[:6]) if frac else 0


_ISO = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?")


@functools.lru_cache(maxsize=1024)
def _minute(stamp: str, zone: str | None) -> int:
    """Unix seconds of ``YYYY-MM-DDTHH:MM`` at a UTC offset (cached: a log's lines share minutes)."""
    t = _utc(int(stamp[:4]), int(stamp[5:7]), int(stamp[8:10]), _hms(stamp[11:13], stamp[14:16], "0"), 0)
    if zone and zone != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[-2:]) * 60
        t -= offset if zone[0] == "+" else -offset
    if not 0 <= t < _MAX_TIME - 60:
        raise AlertError(f"time out of range: {stamp}{zone or ''}")
    return int(t)


def _iso_time(text: Any) -> float:
    """EVE's ``2009-11-24T21:27:09.534255+0100`` (or ``+01:00``, ``Z``, none: UTC) as Unix seconds."""
    m = _ISO.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise AlertError(f"timestamp not ISO 8601: {str(text)[:40]!r}")
    second, frac, zone = m.groups()
    if second > "59":
        raise AlertError(f"no such second: {text}")
    return _minute(text[:16], zone) + int(second) + _micro(frac) / 1e6


_SNORT_TS = re.compile(r"(\d\d)/(\d\d)(?:/(\d{2}|\d{4}))?-(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?")


def _yy(two: int) -> int:
    """A two-digit year as Snort's ts_print wrote it (tm_year - 100 from 2000 on)."""
    return 1900 + two if two >= 70 else 2000 + two


def _snort_time(m: re.Match, orders: tuple[str, ...], year, span, stats) -> float:
    """A Snort/Suricata time from a ``_SNORT_TS`` match.

    ``orders`` is the reading of a 2-digit ``A/B/C`` to try first ("ymd" or "mdy"); the first
    that is a real date wins. A 4-digit third part is Suricata's MM/DD/YYYY.
    """
    a, b, c, h, mi, s, frac = m.group(1, 2, 3, 4, 5, 6, 7)
    hms, us = _hms(h, mi, s), _micro(frac)
    if c is None:
        return _yearless(int(a), int(b), hms, us, year, span, stats)
    if len(c) == 4:
        return _utc(int(c), int(a), int(b), hms, us)
    error = None
    for order in orders:
        y, mo, d = (_yy(int(a)), int(b), int(c)) if order == "ymd" else (_yy(int(c)), int(a), int(b))
        try:
            return _utc(y, mo, d, hms, us)
        except AlertError as e:
            error = e
    raise error


def _yearless(month: int, day: int, hms: int, us: int, year, span, stats) -> float:
    """A time without a year: --year, else the year inside the archives' span, else not in the future."""
    if year is not None:
        return _with_year(year, "--year", month, day, hms, us, stats)
    if span:
        lo, hi = span[0] - DAY, span[1] + DAY           # slack: alerts just outside the records
        first = datetime.datetime.fromtimestamp(max(lo, 0), datetime.timezone.utc).year
        last = datetime.datetime.fromtimestamp(min(hi, _MAX_TIME - 1), datetime.timezone.utc).year
        for y in range(last, max(first - 1, 1970) - 1, -1)[:60]:   # latest first; bounded
            try:
                t = _utc(y, month, day, hms, us)
            except AlertError:
                continue                                # Feb 29 of a common year
            if lo <= t <= hi:
                return _with_year(y, "archives' span", month, day, hms, us, stats)
    limit = _time.time() + DAY
    latest = datetime.datetime.fromtimestamp(limit, datetime.timezone.utc).year
    for y in range(latest, latest - 9, -1):             # 8 years back reaches a Feb 29
        try:
            t = _utc(y, month, day, hms, us)
        except AlertError:
            continue
        if t <= limit:
            return _with_year(y, "not in the future", month, day, hms, us, stats)
    raise AlertError(f"no year fits {month:02d}/{day:02d}")


def _with_year(y: int, how: str, month: int, day: int, hms: int, us: int, stats) -> float:
    t = _utc(y, month, day, hms, us)
    if stats is not None:
        stats.years.setdefault(y, how)
    return t


# --- fields ---------------------------------------------------------------------------------------

_DOTTED = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")


@functools.lru_cache(maxsize=1 << 16)          # logs repeat their hosts
def _addr(text: str) -> str:
    """canonical_address, with a shortcut for the IPv4 text that is canonical already."""
    return text if _DOTTED.fullmatch(text) else canonical_address(text)


def _uint(value: Any, hi: int, name: str) -> int:
    """A JSON number or digit string in 0..hi; bools, floats (NaN too) and the rest are bad."""
    if type(value) is int and 0 <= value <= hi:          # the common case, first
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.isdecimal() and len(value) <= 20:
        n = int(value)
    else:
        raise AlertError(f"{name}: not a whole number: {str(value)[:30]!r}")
    if not 0 <= n <= hi:
        raise AlertError(f"{name}: {n} out of range 0..{hi}")
    return n


def _opt_uint(obj: dict, key: str, hi: int) -> int | None:
    value = obj.get(key)
    return None if value is None else _uint(value, hi, key)


def _opt_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise AlertError(f"{key}: not a string")


def _proto(value: Any, v6: bool) -> int | None:
    """EVE's and Snort's protocol names as numbers; Snort's packet types that are not one are None."""
    if isinstance(value, int):
        return proto_number(value)
    if not isinstance(value, str) or len(value) > 20:
        raise AlertError(f"proto: {str(value)[:30]!r}")
    return _proto_name(value, v6)


@functools.lru_cache(maxsize=256)
def _proto_name(value: str, v6: bool) -> int | None:
    text = value.strip().lower()
    if not text.isascii():
        raise AlertError(f"unknown protocol: {value[:20]!r}")   # int() refuses what isdigit() takes
    if text in ("ip", "pdu", "file", "user", "none", ""):
        return None
    if text == "icmp":
        return 58 if v6 else 1                       # Snort 3 calls both ICMP
    if text.startswith("proto"):
        text = text[5:].lstrip(":-")                 # Suricata's and Snort 2's PROTO:047
    return proto_number(text)


def _port(text: str) -> int:
    if not (text.isdecimal() and len(text) <= 5 and int(text) <= 65535):
        raise AlertError(f"bad port {text[:30]!r}")
    return int(text)


def _split_ap(text: str, ported: bool) -> tuple[str, int | None]:
    """``addr:port``, ``[v6]:port``, ``v6:port`` or a bare address; port 0 (Snort's none) is None.

    A bare IPv6 address and one followed by ``:port`` look alike: ``ported`` says which to expect.
    """
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:] if end > 0 else "?"
        if rest and rest[0] != ":":
            raise AlertError(f"bad address {text[:60]!r}")
        port = _port(rest[1:]) if rest else None
        return _addr(text[1:end]), port or None
    colons = text.count(":")
    if colons == 0:
        return _addr(text), None
    if colons == 1 or ported:
        host, _, port = text.rpartition(":")
        try:
            return _addr(host), _port(port) or None
        except AlertError:
            if colons == 1:
                raise
    return _addr(text), None                        # IPv6 without a port


def _lookup(sid_map: dict | None, gid: int, sid: int) -> str:
    if not sid_map:
        return ""
    # gid 3 (shared-object rules) shares gid 1's sids in a v1 map (barnyard2 map.c)
    return sid_map.get((gid, sid)) or (sid_map.get((1, sid), "") if gid == 3 else "")


_OPTIONAL = {f.name: f.default for f in dataclasses.fields(Alert) if f.default is not dataclasses.MISSING}


def _alert(fmt: str, raw: str, t: float, gid: int, sid: int, rev: int, msg: str | None,
           proto: int | None, saddr: str, sport: int | None, daddr: str, dport: int | None,
           sid_map: dict | None, **extra: Any) -> Alert:
    if proto is not None and proto not in PORT_PROTOS:
        sport = dport = None                            # ICMP's "ports" are type and code
    # Filled like Alert(...) would, minus the frozen dataclass's object.__setattr__ per field:
    # that took a quarter of a fast line's parse time. Equal and hashed the same.
    alert = object.__new__(Alert)
    alert.__dict__.update(_OPTIONAL, time=t, gid=gid, sid=sid, rev=rev,
                          msg=msg or _lookup(sid_map, gid, sid), proto=proto, saddr=saddr,
                          sport=sport, daddr=daddr, dport=dport, format=fmt, raw=raw, **extra)
    return alert


def _json(line: str) -> dict:
    try:
        obj = orjson.loads(line)
    except (ValueError, RecursionError) as e:            # JSONDecodeError is a ValueError
        raise AlertError(f"not JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise AlertError("JSON but not an object")
    return obj


# --- line formats ---------------------------------------------------------------------------------

_EVE_TYPE = re.compile(r'"event_type"\s*:\s*"([^"\\]*)"')


def _eve(line: str, year, span, sid_map, stats) -> Alert | None:
    # Most of an eve.json is flow, dns, http... events: skipped on sight of their event_type
    # (Suricata writes it before any nested object) without decoding the rest.
    kind = _EVE_TYPE.search(line)
    if kind and kind.group(1) != "alert" and line[0] == "{" and line.rstrip()[-1] == "}":
        return None
    obj = _json(line)
    if obj.get("event_type") != "alert":
        return None
    a = obj.get("alert")
    if not isinstance(a, dict):
        raise AlertError("alert: missing or not an object")
    saddr, daddr = obj.get("src_ip"), obj.get("dest_ip")
    if not isinstance(saddr, str) or not isinstance(daddr, str):
        raise AlertError("src_ip/dest_ip missing")
    saddr, daddr = _addr(saddr), _addr(daddr)
    proto = _proto(obj["proto"], ":" in saddr) if obj.get("proto") is not None else None
    sid = a.get("signature_id")
    if sid is None:
        raise AlertError("alert.signature_id missing")
    return _alert(
        "eve", line, _iso_time(obj.get("timestamp")), _uint(a.get("gid", 1), U32, "gid"),
        _uint(sid, U32, "signature_id"), _uint(a.get("rev", 0), U32, "rev"), _opt_str(a, "signature"),
        proto, saddr, _opt_uint(obj, "src_port", 65535), daddr, _opt_uint(obj, "dest_port", 65535),
        sid_map, priority=_opt_uint(a, "severity", U32), classification=_opt_str(a, "category") or None,
        community_id=_community_id(obj.get("community_id")), flow_id=_opt_uint(obj, "flow_id", _MAX_FLOW_ID),
        app_proto=_opt_str(obj, "app_proto"), action=_opt_str(a, "action"))


def _community_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise AlertError("community_id: not a Community ID")
    return value


# --- EVE alerts straight to rows ------------------------------------------------------------------
#
# An eve.json import spends its time here: a well-formed alert line becomes the store's row with no
# Alert in between. Anything unusual (another event, a bad or odd field, invalid UTF-8) returns
# None and goes to ``_eve``, which decides and says what is wrong: the rows are those of
# ``row_of(_eve(line))`` and a bad line is told the same.

_EVE_TYPE_BYTES = re.compile(_EVE_TYPE.pattern.encode())


def _eve_row(line: bytes, sid_map) -> tuple | None:
    """The ``alert_types.ROW_FIELDS`` values of a plain EVE alert line (``_lines``' bytes), or None."""
    kind = _EVE_TYPE_BYTES.search(line)
    if kind is None or kind.group(1) != b"alert":
        return None
    raw = line.rstrip(b"\n").removesuffix(b"\r")        # what decode_line keeps: the id's text
    if not raw.isascii() and not _is_utf8(raw):
        return None                     # decode_line replaces its bad bytes (orjson refuses them too)
    try:
        obj = orjson.loads(raw)
    except (ValueError, RecursionError):
        return None
    a = obj.get("alert") if type(obj) is dict and obj.get("event_type") == "alert" else None
    if type(a) is not dict:
        return None
    try:
        return _eve_values(obj, a, raw, sid_map)
    except ValueError:                                  # AlertError: _eve says it again, and why
        return None


def _eve_values(obj: dict, a: dict, raw: bytes, sid_map) -> tuple | None:
    """``_eve_row``'s fields, each as ``_eve`` takes it; None (or AlertError) for anything else.
    The tests are written out, not called: this runs for every line of an import."""
    saddr, daddr, proto = obj.get("src_ip"), obj.get("dest_ip"), obj.get("proto")
    gid, sid, rev = a.get("gid", 1), a.get("signature_id"), a.get("rev", 0)
    sport, dport = obj.get("src_port"), obj.get("dest_port")
    flow_id, severity, cid = obj.get("flow_id"), a.get("severity"), obj.get("community_id")
    msg, cls, app_proto, action = a.get("signature"), a.get("category"), obj.get("app_proto"), a.get("action")
    if not (type(saddr) is str and type(daddr) is str
            and type(gid) is int and type(sid) is int and type(rev) is int
            and 0 <= gid <= U32 and 0 <= sid <= U32 and 0 <= rev <= U32
            and (sport is None or type(sport) is int and 0 <= sport <= 65535)
            and (dport is None or type(dport) is int and 0 <= dport <= 65535)
            and (severity is None or type(severity) is int and 0 <= severity <= U32)
            and (flow_id is None or type(flow_id) is int and 0 <= flow_id <= _MAX_FLOW_ID)
            and (cid is None or type(cid) is str and len(cid) <= 64)
            and (msg is None or type(msg) is str) and (cls is None or type(cls) is str)
            and (app_proto is None or type(app_proto) is str) and (action is None or type(action) is str)):
        return None
    saddr, daddr = _addr(saddr), _addr(daddr)
    proto = _proto(proto, ":" in saddr) if proto is not None else None
    if proto is not None and proto not in PORT_PROTOS:
        sport = dport = None                            # as _alert: ICMP's type and code
    return (row_id(b"eve", raw), _eve_time(obj.get("timestamp")), gid, sid, rev,
            msg or _lookup(sid_map, gid, sid), severity, cls or None, proto, saddr, sport, daddr,
            dport, cid, flow_id, app_proto, action, "eve")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _eve_time(text: Any) -> float:
    """``_iso_time``, its whole seconds cached: the common six-digit fraction is cut out of the
    stamp, and what is left (``2009-11-24T21:27:09+0100``) is valid exactly when the stamp is."""
    if type(text) is str and len(text) >= 26 and text[19] == "." and (frac := text[20:26]).isdigit() \
            and frac.isascii():
        return _whole_seconds(text[:19] + text[26:]) + int(frac) / 1e6
    return _iso_time(text)


@functools.lru_cache(maxsize=1 << 14)                 # a log's alerts share seconds
def _whole_seconds(stamp: str) -> float:
    return _iso_time(stamp)


_RULE = re.compile(r"(\d{1,10}):(\d{1,10}):(\d{1,10})")


def _snort3_json(line: str, year, span, sid_map, stats) -> Alert:
    obj = _json(line)
    if "event_type" in obj:
        raise AlertError("has event_type: Suricata EVE, not Snort 3 alert_json")
    m = _SNORT_TS.fullmatch(obj["timestamp"]) if isinstance(obj.get("timestamp"), str) else None
    if obj.get("seconds") is not None:                  # exact; the timestamp adds its µs
        t = _uint(obj["seconds"], _MAX_TIME - 1, "seconds") + (_micro(m.group(7)) / 1e6 if m else 0)
    elif m:
        t = _snort_time(m, ("ymd", "mdy"), year, span, stats)
    else:
        raise AlertError("no time (timestamp or seconds)")
    src, dst = _endpoint(obj, "src"), _endpoint(obj, "dst")
    if isinstance(obj.get("rule"), str):
        r = _RULE.fullmatch(obj["rule"])
        if not r:
            raise AlertError(f"rule: not gid:sid:rev: {obj['rule'][:40]!r}")
        gid, sid, rev = (_uint(int(x), U32, "rule") for x in r.groups())
    elif obj.get("sid") is not None:
        gid, sid, rev = (_uint(obj.get("gid", 1), U32, "gid"), _uint(obj["sid"], U32, "sid"),
                         _uint(obj.get("rev", 0), U32, "rev"))
    else:
        raise AlertError("no rule (gid/sid or rule)")
    proto = _proto(obj["proto"], ":" in src[0]) if obj.get("proto") is not None else None
    cls, service = _opt_str(obj, "class"), _opt_str(obj, "service")
    return _alert("snort3-json", line, t, gid, sid, rev, _opt_str(obj, "msg"), proto, *src, *dst,
                  sid_map, priority=_opt_uint(obj, "priority", U32),
                  classification=None if cls in (None, "", "none") else cls,
                  app_proto=None if service in (None, "", "unknown") else service,
                  action=_opt_str(obj, "action"))


def _endpoint(obj: dict, side: str) -> tuple[str, int | None]:
    """``src_addr``/``src_port``, else ``src_ap``; the same for dst."""
    addr, ap = obj.get(f"{side}_addr"), obj.get(f"{side}_ap")
    if isinstance(addr, str):
        port = _opt_uint(obj, f"{side}_port", 65535)
        if port is None and isinstance(ap, str):
            port = _split_ap(ap, True)[1]
        return _addr(addr), port
    if isinstance(ap, str):
        return _split_ap(ap, True)
    raise AlertError(f"no {side}_addr or {side}_ap")


CSV_FIELDS = ("timestamp", "pkt_num", "proto", "pkt_gen", "pkt_len", "dir", "src_ap", "dst_ap",
              "rule", "action")


def _snort3_csv(line: str, year, span, sid_map, stats) -> Alert:
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != len(CSV_FIELDS):
        raise AlertError(f"{len(fields)} fields, not the {len(CSV_FIELDS)} of alert_csv's default")
    ts, _, proto, _, _, _, src_ap, dst_ap, rule, action = fields
    m = _SNORT_TS.fullmatch(ts)
    r = _RULE.fullmatch(rule)
    if not m or not r:
        raise AlertError("timestamp" if not m else "rule: not gid:sid:rev")
    src, dst = _split_ap(src_ap, True), _split_ap(dst_ap, True)
    gid, sid, rev = (_uint(int(x), U32, "rule") for x in r.groups())
    return _alert("snort3-csv", line, _snort_time(m, ("ymd", "mdy"), year, span, stats), gid, sid,
                  rev, None, _proto(proto, ":" in src[0]), *src, *dst, sid_map, action=action or None)


_FAST_HEAD = re.compile(
    r"\s*" + _SNORT_TS.pattern + r"\s+(?:\[([\w-]{1,20})\]\s+)?"   # time, [action]
    r"\[\*\*\]\s*\[(\d{1,10}):(\d{1,10}):(\d{1,10})\]\s*(?:<[^<>]*>\s*)?")   # Snort 3 -I: <interface>
_FAST_META = re.compile(r"\s*(?:\[Classification:\s*([^\]]*)\]\s*)?(?:\[Priority:\s*(\d{1,10})\]\s*)?"
                        r"(?:\[AppID:\s*[^\]]*\]\s*)?")
_FAST_TAIL = re.compile(r"\{([^{}]*)\}\s+(\S+)\s+->\s+(\S+)\s*")


def _fast(line: str, year, span, sid_map, stats) -> Alert:
    # Parsed in parts found with rfind, not one regex: the message may hold "[", "]" and even
    # "[**]", and one regex backtracks quadratically over such a line.
    head = _FAST_HEAD.match(line)
    brace = line.rfind("{")
    tail = _FAST_TAIL.fullmatch(line, brace) if head and brace > head.end() else None
    stars = line.rfind("[**]", head.end(), brace) if tail else -1
    if stars < 0:
        raise AlertError("not an alert_fast line")
    meta = _FAST_META.fullmatch(line, stars + 4, brace)
    if not meta:
        raise AlertError("not [Classification: ...] [Priority: n] after the message")
    msg = line[head.end():stars].strip()
    snort3 = len(msg) > 1 and msg[0] == msg[-1] == '"'  # Snort 3 quotes the message
    if snort3:
        msg = msg[1:-1]
    suricata = len(head.group(3) or "") == 4           # MM/DD/YYYY: Suricata prints every port
    t = _snort_time(head, ("ymd", "mdy") if snort3 else ("mdy", "ymd"), year, span, stats)
    name, src, dst = tail.groups()
    v6 = src.count(":") > 1
    proto = _proto(name, v6)
    ported = suricata or proto in PORT_PROTOS
    cls, prio = meta.groups()
    return _alert("fast", line, t, *(_uint(int(x), U32, "rule") for x in head.group(9, 10, 11)), msg,
                  proto, *_split_ap(src, ported), *_split_ap(dst, ported), sid_map,
                  priority=int(prio) if prio else None,
                  classification=None if cls in (None, "", "(null)") else cls.strip(),
                  action=head.group(8))


_PARSERS: dict[str, Callable[..., Alert | None]] = {
    "eve": _eve, "snort3-json": _snort3_json, "snort3-csv": _snort3_csv, "fast": _fast}


def parse_line(fmt: str, line: str, *, year: int | None = None, span: tuple[float, float] | None = None,
               sid_map: dict[tuple[int, int], str] | None = None,
               stats: ReadStats | None = None) -> Alert | None:
    """One line of a text format (without its newline) as an Alert; None for a line to skip.

    Skipped: blank lines, ``#`` comments, EVE events other than alerts. ``stats`` only gets the
    years chosen for year-less times (read() does the counting).

    :raises AlertError: a bad line, or an unknown or binary format.

    Example::

        parse_line("fast", '05/13-10:17:08.222534 [**] [1:1000001:1] "x" [**] [Priority: 3] '
                   "{TCP} 145.254.160.237:3372 -> 65.208.228.223:80", year=2004)
    """
    parser = _PARSERS.get(fmt)
    if parser is None:
        raise AlertError(f"{fmt}: binary, read it with read()" if fmt == "unified2"
                         else f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if len(line) > MAX_LINE:
        raise AlertError(f"line longer than {MAX_LINE} bytes")
    return _parse(parser, line, year, span, sid_map, stats)


def _parse(parser: Callable, line: str, year, span, sid_map, stats) -> Alert | None:
    """``parser`` on a line, or None for a blank line or a comment (positional: read() calls it
    for every line)."""
    stripped = line.strip()
    if not stripped or stripped[0] == "#":
        return None
    return parser(line, year, span, sid_map, stats)


# --- files ----------------------------------------------------------------------------------------

U2_EVENTS = {7, 72, 104, 105, 114}
U2_OTHER = {2, 110, 111, 112, 113}        # packet, extra data, appid, appstat: not alerts
U2_MAX = 1 << 20                          # a record longer than this is garbage, not a packet


def detect(head: bytes) -> str:
    """The format of a file from its first bytes (a complete first line is best).

    :raises AlertError: no format fits.

    Example::

        detect(b'{"timestamp": "2004-05-13T10:17:08.222534+0000", "event_type": "alert"}\\n')  # "eve"
    """
    if len(head) >= 8:
        rtype, length = struct.unpack(">II", head[:8])
        if rtype in U2_EVENTS | U2_OTHER and length <= U2_MAX:
            return "unified2"
    for line in head.decode("utf-8", "replace").splitlines()[:100]:
        s = line.strip()
        if not s or s[0] == "#":
            continue
        if s[0] == "{":
            try:
                obj = json.loads(s)
            except (ValueError, RecursionError):
                obj = None                   # a first line cut short by the head
            if isinstance(obj, dict):
                return "eve" if "event_type" in obj else "snort3-json"
            return "eve" if '"event_type"' in s else "snort3-json"
        if _FAST_HEAD.match(s):
            return "fast"
        if _SNORT_TS.match(s) and s.count(",") == len(CSV_FIELDS) - 1:
            return "snort3-csv"
        raise AlertError(f"not a known alert format (first line: {s[:60]!r}); give the format")
    raise AlertError("no alert line in the first bytes")


class _Chain(io.RawIOBase):
    """The bytes already read for detection, then the rest of the stream (pipes cannot seek)."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self._head[:len(buf)] if self._head else self._stream.read(len(buf))
        self._head = self._head[len(data):]
        buf[:len(data)] = data
        return len(data)


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without its newline, too long); of a line over MAX_LINE only its start
    is kept, the rest read past in pieces."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE and line[-1:] != b"\n":
            start = line[:120]
            while line and line[-1:] != b"\n":
                line = stream.readline(MAX_LINE)
            yield number, start, True
            continue
        yield number, line, False


def decode_line(raw: bytes) -> str:
    """A line's text as every reader takes it, without its newline (and one CR), UTF-8 with bad
    bytes replaced: the same line gets the same id from ``read`` and from the follower."""
    return raw.rstrip(b"\n").removesuffix(b"\r").decode("utf-8", "replace")


def read(stream: BinaryIO, fmt: str | None = None, *, year: int | None = None,
         span: tuple[float, float] | None = None, sid_map: dict[tuple[int, int], str] | None = None,
         stats: ReadStats | None = None) -> Iterator[Alert]:
    """Alerts from a binary stream; the format is detected from its first bytes when ``fmt`` is None.

    Bad lines (records) are counted in ``stats`` and skipped; reading goes on. Lines are decoded
    as UTF-8 with invalid bytes replaced.

    :raises AlertError: the format is unknown or cannot be detected (before any alert).

    Example::

        stats = ReadStats()
        alerts = list(read(sys.stdin.buffer, "fast", span=(t0, t1), stats=stats))
        print(stats.years)          # {2024: "archives' span"}
    """
    stats = stats if stats is not None else ReadStats()
    fmt, stream = _opened(stream, fmt)
    if fmt is None:
        return
    if fmt == "unified2":
        yield from _read_unified2(stream, sid_map, stats)
        return
    parser = _PARSERS[fmt]
    for number, line, too_long in _lines(stream):
        alert = _read_line(parser, number, line, too_long, year, span, sid_map, stats)
        if alert is not None:
            yield alert


def read_rows(stream: BinaryIO, fmt: str | None = None, *, year: int | None = None,
              span: tuple[float, float] | None = None,
              sid_map: dict[tuple[int, int], str] | None = None,
              stats: ReadStats | None = None, native: bool = True) -> Iterator[tuple]:
    """``read``'s alerts as the store's rows (``alert_types.row_of``), the same rows and counts;
    an EVE alert line becomes its row directly, in C (``_eve_rows_native``) unless ``native`` is
    False or the module is not built, else in Python (``_eve_row``): what ``flowtap alerts
    import`` reads.

    :raises AlertError: as ``read``.
    """
    stats = stats if stats is not None else ReadStats()
    fmt, stream = _opened(stream, fmt)
    if fmt != "eve":
        yield from map(row_of, read(stream, fmt, year=year, span=span, sid_map=sid_map, stats=stats))
        return
    if native and _alertparse is not None:
        yield from _eve_rows_native(stream, year, span, sid_map, stats)
        return
    for number, line, too_long in _lines(stream):
        row = None if too_long else _eve_row(line, sid_map)
        if row is not None:
            stats.read += 1
            yield row
        elif (alert := _read_line(_eve, number, line, too_long, year, span, sid_map, stats)) is not None:
            yield row_of(alert)


# --- EVE lines to rows in C ------------------------------------------------------------------------
#
# native/alertparse.c reads a chunk of lines at a time and answers with one pickle: the row of each
# plain alert line, a count of the lines to skip, the bytes of every line it leaves to Python (which
# reads it as ``_lines`` and ``_eve_row``/``_eve`` would). The pickle makes the rows' objects in C.

CHUNK = 1 << 20                              # bytes of lines per read; and the rest of the last line
_NATIVE_OUT = CHUNK + MAX_LINE + (1 << 16)   # the pickle's room: one line of a chunk always fits


def _eve_rows_native(stream: BinaryIO, year, span, sid_map, stats: ReadStats) -> Iterator[tuple]:
    """``read_rows`` of an EVE stream through ``_alertparse``: the same rows and counts."""
    ffi, lib = _alertparse.ffi, _alertparse.lib
    out, out_len = ffi.new("unsigned char[]", _NATIVE_OUT), ffi.new("size_t *")
    number = 0
    for data in _chunks(stream):
        pos = 0
        while pos < len(data):
            end = lib.alertparse_eve(data, len(data), pos, MAX_LINE, out, _NATIVE_OUT, out_len)
            if end <= pos:
                raise RuntimeError("alertparse made no progress")   # _NATIVE_OUT holds any line
            pos = end
            for item in _NativeRows(io.BufferedReader(io.BytesIO(ffi.buffer(out, out_len[0])))).load():
                kind = type(item)
                if kind is tuple:
                    number += 1
                    stats.read += 1
                    yield item if not sid_map or item[5] else _with_msg(item, sid_map)
                elif kind is int:
                    number += item
                    stats.skipped += item
                else:
                    number += 1
                    row = _left_line(stream, number, item, year, span, sid_map, stats)
                    if row is not None:
                        yield row


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream in pieces that end with a line: CHUNK bytes and the rest of their last line, of
    which at most MAX_LINE + 1 bytes (a longer line is bad: ``_left_line`` reads past its rest)."""
    while data := stream.read(CHUNK):
        if data[-1:] != b"\n":
            data += stream.readline(MAX_LINE + 1)
        yield data


class _NativeRows(pickle.Unpickler):
    """alertparse.c's pickle: data only (a list of tuples, numbers, strings, bytes); a class or
    function named in it is refused, whatever a bug there might write."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name}: not in a row")


def _with_msg(row: tuple, sid_map: dict) -> tuple:
    """A row without a message, given the sid map's (``_alert``'s ``msg or _lookup``)."""
    return row[:5] + (_lookup(sid_map, row[2], row[3]),) + row[6:]


def _left_line(stream: BinaryIO, number: int, line: bytes, year, span, sid_map,
               stats: ReadStats) -> tuple | None:
    """A line alertparse.c left, read as ``read_rows`` reads it in Python: its row, or None (the
    line skipped or bad, counted). A line over MAX_LINE is bad, and the rest of it read past."""
    too_long = len(line.removesuffix(b"\n")) > MAX_LINE
    if too_long:
        rest = line
        while rest and rest[-1:] != b"\n":      # what _lines does: the line's end is not kept
            rest = stream.readline(MAX_LINE)
        line = line[:120]
    row = None if too_long else _eve_row(line, sid_map)
    if row is not None:
        stats.read += 1
        return row
    alert = _read_line(_eve, number, line, too_long, year, span, sid_map, stats)
    return None if alert is None else row_of(alert)


def _opened(stream: BinaryIO, fmt: str | None) -> tuple[str | None, BinaryIO]:
    """The format (detected from the first bytes when None; None for an empty stream) and the
    stream to read, those bytes included.

    :raises AlertError: unknown format, or none detected.
    """
    if fmt is None:
        head = b""
        while len(head) < HEAD and b"\n" not in head:    # a pipe gives what it has: wait for a line
            chunk = stream.read(HEAD - len(head))
            if not chunk:
                break
            head += chunk
        if not head:
            return None, stream
        return detect(head), io.BufferedReader(_Chain(head, stream), HEAD)
    if fmt not in FORMATS:
        raise AlertError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    return fmt, stream


def _read_line(parser: Callable, number: int, line: bytes, too_long: bool, year, span, sid_map,
               stats: ReadStats) -> Alert | None:
    """One line of ``_lines`` through ``parser``, counted in ``stats``: the Alert, or None for a
    line skipped or bad."""
    text = decode_line(line)
    if too_long:
        stats.note_bad(number, f"line longer than {MAX_LINE} bytes", text)
        return None
    try:
        alert = _parse(parser, text, year, span, sid_map, stats)
    except ValueError as e:                  # AlertError, or what slipped past the checks
        stats.note_bad(number, str(e), text)
        return None
    if alert is None:
        stats.skipped += 1
    else:
        stats.read += 1
    return alert


_U2_ACTIONS = {104: {1: "blocked", 2: "would block"}, 114: {1: "drop", 2: "block", 3: "reset"}}


def _read_unified2(stream: BinaryIO, sid_map, stats: ReadStats) -> Iterator[Alert]:
    """Events of a unified2 stream; the line number in ``first_bad`` is the record's number."""
    from idstools import unified2                # decodes the event records' fixed layouts
    number = 0
    while True:
        header = stream.read(8)
        if not header:
            return
        number += 1
        if len(header) < 8:
            stats.note_bad(number, "truncated record header", header.hex())
            return
        rtype, length = struct.unpack(">II", header)
        if length > U2_MAX:                      # the next record cannot be found after this
            stats.note_bad(number, f"record length {length} over {U2_MAX}", header.hex())
            return
        body = stream.read(length)
        if len(body) < length:
            stats.note_bad(number, f"truncated record ({len(body)} of {length} bytes)", header.hex())
            return
        if rtype in U2_OTHER:
            stats.skipped += 1
            continue
        if rtype not in U2_EVENTS:
            stats.note_bad(number, f"unknown record type {rtype}", header.hex())
            continue
        try:
            alert = _unified2_alert(rtype, unified2.decode_record(rtype, body), sid_map)
        except (struct.error, ValueError, KeyError, TypeError) as e:   # AlertError is a ValueError
            stats.note_bad(number, f"record type {rtype}: {e}", body[:60].hex())
            continue
        stats.read += 1
        yield alert


def _unified2_alert(rtype: int, e: dict, sid_map) -> Alert:
    usec = e["event-microsecond"]
    if usec > 999_999:
        raise AlertError(f"event microsecond {usec}")
    v3 = rtype == 114                             # idstools names a few of its fields apart
    proto = e["ip-protocol"] if v3 else e["protocol"]
    saddr, daddr = _addr(e["source-ip"]), _addr(e["destination-ip"])
    sport, dport = e["sport-itype"], e["dport-itype"] if v3 else e["dport-icode"]
    gid, sid, rev = e["generator-id"], e["signature-id"], e["signature-revision"]
    raw = (f"unified2 type={rtype} sensor={e['sensor-id']} event={e['event-id']} "
           f"time={e['event-second']}.{usec:06d} rule={gid}:{sid}:{rev} "
           f"class={e['classification-id']} priority={e['priority']} proto={proto} "
           f"{saddr} {sport} -> {daddr} {dport}")
    return _alert("unified2", raw, e["event-second"] + usec / 1e6, gid, sid, rev, None, proto,
                  saddr, sport, daddr, dport, sid_map, priority=e["priority"],
                  action=_U2_ACTIONS[114].get(e["action"]) if v3 else _U2_ACTIONS[104].get(e["blocked"]))


# --- signature messages ---------------------------------------------------------------------------

_RULE_BODY = re.compile(r'\((?:[^"()\n]++|\n|"(?:[^"\\\n]|\\.)*+")*+\)')   # possessive: no backtracking
_RULE_MSG = re.compile(r'(?:^|;)\s*msg\s*:\s*"((?:[^"\\]|\\.)*)"')
_RULE_SID = re.compile(r"(?:^|;)\s*sid\s*:\s*(\d{1,10})\s*(?:;|$)")
_RULE_GID = re.compile(r"(?:^|;)\s*gid\s*:\s*(\d{1,10})\s*(?:;|$)")


def load_sid_map(path) -> dict[tuple[int, int], str]:
    """(gid, sid) -> message, from a sid-msg.map or a rules file.

    sid-msg.map v1 is ``sid || msg || ref...`` (gid 1); v2 (a ``#v2`` first line, or lines of six
    or more fields led by three numbers) is ``gid || sid || rev || class || priority || msg ||
    ref...`` (barnyard2 src/map.c, which reads both; pulledpork writes them). Rules files give
    ``msg:"..."; sid:N;`` and ``gid:N`` (default 1), a rule over several lines included.

    :raises OSError: the file cannot be read.

    Example::

        read(open("alert_csv.txt", "rb"), sid_map=load_sid_map("/etc/snort/rules/local.rules"))
    """
    text = pathlib.Path(path).read_text("utf-8", "replace")
    out: dict[tuple[int, int], str] = {}
    v2 = False
    for number, line in enumerate(text.splitlines()):
        s = line.strip()
        if number == 0 and s.lower().startswith("#v2"):
            v2 = True
        if s.startswith("#") or "||" not in s:
            continue
        f = [p.strip() for p in s.split("||")]
        numbers = [p.isdecimal() and len(p) <= 10 for p in f[:3]]
        if len(f) >= 6 and all(numbers):
            out[(int(f[0]), int(f[1]))] = f[5]
        elif len(f) >= 2 and numbers[0] and not v2:
            out[(1, int(f[0]))] = f[1]
    if "sid" in text and "msg" in text:
        for m in _RULE_BODY.finditer(text):
            body = m.group()[1:-1]
            msg, sid = _RULE_MSG.search(body), _RULE_SID.search(body)
            if msg and sid:
                gid = _RULE_GID.search(body)
                out[(int(gid.group(1)) if gid else 1, int(sid.group(1)))] = re.sub(
                    r"\\(.)", r"\1", msg.group(1))
    return out
