"""What the fuzz harnesses and the Hypothesis properties check, shared so they check the same thing.

Properties:

- filter: ``filter.parse(text)`` returns an AST or raises ``FilterError`` whose position is a column
  of the text (1 .. len + 1), never another exception; for a parsed filter, the Python predicate
  (``compile_predicate``) and the SQL form (``compile_sql`` + ``register_sql_functions``) select the
  same records from a small in-memory archive table typed as the real one (``archive.FLOW_COLUMNS``,
  totals derived as ``query.source()`` derives them), and neither raises.
- config: ``config.load(path)`` / ``config.from_dict(data)`` return a ``Config`` or raise
  ``ConfigError``, never another exception; a loaded config has every ranged value in range and
  survives a round trip (written back as TOML and loaded again, it is equal).

``KNOWN`` lists the inputs of bugs already reported and not yet fixed (see the Fuzzing section of
bench/RESULTS.md): with ``tolerate_known=True`` the harness skips them so that long runs keep
looking for new bugs; the regression tests in tests/test_fuzz_props.py are ``xfail(strict=True)``
on them, so fixing a bug makes those tests fail until its entry here is removed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from appliance import archive, config, fields, filter  # noqa: E402

INT64_MAX = (1 << 63) - 1


# --- known, reported, unfixed bugs ------------------------------------------------------------

def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _beyond_int64(ast: Any) -> bool:
    """A comparison constant SQLite cannot bind (an int outside the signed 64-bit range)."""
    stack = [ast]
    while stack:
        n = stack.pop()
        if isinstance(n, (filter.And, filter.Or)):
            stack += [n.left, n.right]
        elif isinstance(n, filter.Not):
            stack.append(n.expr)
        elif isinstance(n, filter.Compare) and isinstance(n.value, int) and not -INT64_MAX - 1 <= n.value <= INT64_MAX:
            return True
    return False


def _depth(ast: Any) -> int:
    """Nesting depth of an AST (iteratively: the AST itself may be deep)."""
    best, stack = 0, [(ast, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if isinstance(n, (filter.And, filter.Or)):
            stack += [(n.left, d + 1), (n.right, d + 1)]
        elif isinstance(n, filter.Not):
            stack.append((n.expr, d + 1))
    return best


DEEP = 40     # ASTs deeper than this hit BUG-F3/F4 (SQLite's parser stack, Python's nesting limits)

# Every bug the fuzzers found (F1-F5 in the filter language, C1 in the config loader) is fixed; their
# reproductions are regression tests in tests/test_fuzz_props.py. New ones go here while open.
KNOWN: dict[str, str] = {}


# --- filter -----------------------------------------------------------------------------------

def _records() -> list[dict[str, Any]]:
    from conftest import build_record
    base = dict(seq=0)
    recs = [
        dict(),                                                                   # TCP FIN, v4
        dict(proto=17, sport=5353, dport=53, state="CON", sflags=None, dflags=None, conn_state=None,
             history=None, saddr="10.0.0.2", daddr="10.0.0.53", dir="<->", sttl=1, dttl=255),
        dict(proto=1, sport=8, dport=0, state="ECO", sflags=None, dflags=None, daddr="10.1.2.3",
             dir="<->", stos=184, svlan=10, dvlan=10),
        dict(proto=0x0806, saddr="02:00:00:00:00:01", daddr="02:00:00:00:00:02", sport=None,
             dport=None, state="INT", dir="who", sttl=None, dttl=None, sflags=None, dflags=None),
        dict(proto=6, saddr="2001:db8::1", daddr="fe80::1", state="RST", sflags="SR", dflags="",
             conn_state="REJ", cause="Status", srcid="sensor2", sretrans=3, spkts=0, sbytes=0,
             sappbytes=0),
        dict(proto=6, state="REQ", cause="Timeout", dflags=None, dpkts=0, dbytes=0, dappbytes=0,
             dttl=None, synack=None, ackdat=None, tcprtt=None, flgs="  F       "),
        dict(proto=17, saddr="192.168.7.7", daddr="255.255.255.255", smpls=100, dmpls=None,
             spkts=INT64_MAX // 4, sbytes=INT64_MAX // 4, dbytes=0, dpkts=0, sappbytes=0,
             dappbytes=0, flgs=" f  g     ", dur=0.0, ltime=1700000000.0),
        dict(proto=58, saddr="::ffff:10.0.0.1", daddr="::1", sport=128, dport=0, state="TIM",
             stime=0.0, ltime=0.000001, sttl=0, stos=None, dtos=None, smaxsz=None, sminsz=None),
        dict(proto=132, sport=0, dport=65535, srcid="", cause="Evict", state="CLO",
             sflags="SAFPUREC", dflags="SAFPUREC", history="ShADadFfRr", flgs="*FfgsU   "),
        dict(proto=47, saddr=None, daddr=None, sport=None, dport=None, state=None, cause=None,
             dir=None, srcid=None, smac=None, dmac=None, flgs=None),
    ]
    out = []
    for i, kw in enumerate(recs, 1):
        out.append(build_record(**{**base, **kw, "seq": i}))
    return out


RECORDS = _records()
_STORED = [n for n, _ in archive.FLOW_COLUMNS]


def filter_db() -> sqlite3.Connection:
    """An in-memory archive table of RECORDS typed as archive.FLOW_COLUMNS, with the filter's
    SQL functions installed."""
    conn = sqlite3.connect(":memory:")
    filter.register_sql_functions(conn)
    conn.execute(f"CREATE TABLE flows ({', '.join(f'{n} {t}' for n, t in archive.FLOW_COLUMNS)})")
    conn.executemany(f"INSERT INTO flows VALUES ({', '.join('?' * len(_STORED))})",
                     [tuple(r.get(k) for k in _STORED) for r in RECORDS])
    # No alert store: `alert`/`sid N` link nothing, in SQL (an empty ft_linked) as in Python.
    conn.execute("CREATE TEMP TABLE ft_linked (rid INTEGER, sid INTEGER, gid INTEGER)")
    return conn


_SOURCE = ("(SELECT rowid AS rid, *, " + ", ".join(f"({e}) AS {n}" for n, e in archive.DERIVED.items())
           + " FROM flows)")


def check_filter(text: str, conn: sqlite3.Connection, tolerate_known: bool = False) -> bool:
    """Check the filter property on one text; returns True if it parsed. Raises AssertionError (or
    whatever the code under test raised) on a violation."""
    try:
        ast = filter.parse(text)
    except filter.FilterError as exc:
        assert isinstance(exc.position, int) and 1 <= exc.position <= len(text) + 1, \
            f"FilterError position {exc.position} outside 1..{len(text) + 1} for {text!r}"
        assert str(exc)
        return False
    except RecursionError:
        if tolerate_known:
            return False
        raise
    except (ValueError, UnicodeError):
        if tolerate_known and ("\x00" in text or _has_surrogate(text)):
            return False
        raise
    if tolerate_known and (_has_surrogate(text) or _beyond_int64(ast) or _depth(ast) > DEEP):
        return True
    keep = filter.compile_predicate(ast)
    py = {r["seq"] for r in RECORDS if keep(r)}
    where, params = filter.compile_sql(ast)
    sql = {row[0] for row in conn.execute(f"SELECT seq FROM {_SOURCE} WHERE {where}", params)}
    assert py == sql, f"filter {text!r}: Python selects {sorted(py)}, SQL selects {sorted(sql)} ({where} {params})"
    return True


FILTER_WORDS = sorted(filter._KEYWORDS | set(fields.FIELDS) | set(filter._OP_WORDS)
                      | {"(", ")", "mask", "portrange", "10.0.0.1", "10.0.0.0/8", "2001:db8::1",
                         "fe80::/10", "02:00:00:00:00:01", "10.1", "255.255.0.0", "80", "53-215",
                         "http", "domain", "0", "1", "64", "65535", "65536", "1.5", "0x10", "-1",
                         "1e3", "CON", "RST", "REQ", "Timeout", "stop", "sensor2", "192.168",
                         "::ffff:10.0.0.1", "::1"})


# --- config -----------------------------------------------------------------------------------

CONFIG_KEYS: dict[str, dict[str, Any]] = {
    f.name: {g.name: getattr(f.default_factory(), g.name) for g in dataclasses.fields(f.default_factory())}
    for f in dataclasses.fields(config.Config)
}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped (JSON's escaping
    would write characters beyond the BMP as surrogate pairs, which TOML refuses)."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_text(data: dict[str, dict[str, Any]]) -> str:
    """TOML for a two-level dict of strings, numbers, booleans and lists of strings."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            if math.isnan(v):
                return "nan"
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return _toml_string(str(v))
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{_toml_string(k)} = {value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _check_loaded(cfg: config.Config) -> None:
    assert isinstance(cfg, config.Config)
    for key, (low, high) in config.RANGES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        assert low <= v <= high, f"{key} = {v!r} outside {low}..{high} after validation"
    cfg.digest()
    data = {s: {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(getattr(cfg, s)).items()}
            for s in CONFIG_KEYS}
    again = config.from_dict(tomllib.loads(toml_text(data)))
    assert again == cfg, f"config round trip changed {cfg} into {again}"


def decode_filter(data: bytes) -> str:
    """A filter text from fuzzer bytes. Byte 0 picks the form: 0 UTF-8 text (lone surrogates
    allowed, as argv may carry them), 1 words from FILTER_WORDS (one byte each, a byte past the
    list is a space-less join), 2 raw bytes decoded as argv is (surrogateescape)."""
    if not data:
        return ""
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        try:
            return rest.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return rest.decode("utf-8", "replace")
    if mode == 1:
        out, n = [], len(FILTER_WORDS)
        for b in rest:
            if b < n:
                out.append(" " + FILTER_WORDS[b])
            else:
                out.append(FILTER_WORDS[b % n])
        return "".join(out).lstrip(" ")
    return rest.decode("utf-8", "surrogateescape")


def encode_filter(text: str) -> bytes:
    """The mode-0 fuzzer input for a filter text (seeds)."""
    return b"\x00" + text.encode("utf-8", "surrogatepass")


def decode_config(data: bytes) -> tuple[str, Any]:
    """("bytes", raw file) or ("dict", parsed-TOML-like data) from fuzzer bytes. Byte 0 picks:
    0 the rest is the file; 1 the file is words from TOML_WORDS (a byte each, past the list: a
    newline); 2 a dict built from (section, key, type, value) byte groups."""
    if not data:
        return "bytes", b""
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        return "bytes", rest
    if mode == 1:
        n = len(TOML_WORDS)
        return "bytes", "".join(TOML_WORDS[b] + " " if b < n else "\n" for b in rest).encode()
    sections = list(CONFIG_KEYS) + ["bogus"]
    out: dict[str, Any] = {}
    i = 0
    while i + 4 <= len(rest):
        s, k, t, ln = rest[i], rest[i + 1], rest[i + 2], rest[i + 3]
        i += 4
        raw, i = rest[i:i + ln % 16], i + ln % 16
        section = sections[s % len(sections)]
        keys = list(CONFIG_KEYS.get(section, {})) + ["bogus"]
        key = keys[k % len(keys)]
        num = int.from_bytes(raw[:8] or b"\0", "little", signed=True)
        value: Any = [
            lambda: num, lambda: num / 7.0, lambda: bool(num & 1), lambda: raw.decode("utf-8", "replace"),
            lambda: [raw.decode("latin-1")], lambda: [], lambda: {"x": num}, lambda: float("nan"),
            lambda: float("inf"), lambda: 1 << (num % 80), lambda: None, lambda: [num],
        ][t % 12]()
        if t >= 240:
            out[section] = value            # a section that is not a table
        else:
            out.setdefault(section, {}) if isinstance(out.get(section, {}), dict) else None
            if isinstance(out.get(section), dict):
                out[section][key] = value
    return "dict", out


def check_config_dict(data: Any) -> bool:
    """from_dict: a Config or ConfigError. Returns True if it loaded."""
    try:
        cfg = config.from_dict(data)
    except config.ConfigError as exc:
        assert str(exc)
        return False
    _check_loaded(cfg)
    return True


class ConfigFile:
    """One scratch file that check_config_bytes rewrites: a fresh temporary file (on tmpfs when there
    is one), or a fixed path (the atheris harness: libFuzzer ends the process without atexit, so a
    fixed path is reused instead of leaking one file per run)."""

    def __init__(self, path: str | None = None) -> None:
        if path is not None:
            self.path = path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(prefix="flowtap-fuzz-", suffix=".toml", dir=base)
        os.close(fd)

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def check_config_bytes(raw: bytes, scratch: ConfigFile, tolerate_known: bool = False) -> bool:
    """config.load on a file holding raw: a Config or ConfigError. Returns True if it loaded."""
    if tolerate_known:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
    with open(scratch.path, "wb") as f:
        f.write(raw)
    try:
        cfg = config.load(scratch.path)
    except config.ConfigError as exc:
        assert str(exc)
        return False
    _check_loaded(cfg)
    return True


TOML_WORDS = sorted({*CONFIG_KEYS, *(k for v in CONFIG_KEYS.values() for k in v), "[", "]", "[[", "]]",
                     "=", '"', "'", '"""', "true", "false", "inf", "nan", "-inf", "0x10", "1e3",
                     "1979-05-27T07:32:00Z", "{", "}", ",", "\n", "#", "ipfix+udp://127.0.0.1:4739",
                     "127.0.0.1:8080", "eth0", "br0", "65536", "1024", "0.5"})


# --- seeds --------------------------------------------------------------------------------------

SEED_FILTERS = [
    "tcp", "udp and port 53", "host 10.0.0.1", "src net 10.1", "dst net 10.0.0.0 mask 255.255.0.0",
    "net 2001:db8::/32", "port 53-215", "dst port 80 or 443", "tcp dst port http", "pkts gt 10",
    "src bytes >= 1000", "not ttl 64", "vid 10", "syn and not synack", "dst reset", "retrans",
    "src retrans gt 2", "est", "timeout", "frag", "not man", "state RST", "cause stop",
    "srcid sensor2", "ether host 02:00:00:00:00:01", "ether proto 0x0806", "proto gre",
    "(tcp or udp) and not port 53", "!(tcp || udp) && !arp", "ipv4 and not tcp and not udp",
    "dur gt 1.5", "tcprtt gt 0.005", "seq gt 3", "smaxsz gt 100", "ip6 and icmp6",
    "host 10.0.0.1 and 10.0.0.2", "port 80 or 443 or 8080", "src or dst host ::1",
]

SEED_CONFIGS = [
    "",
    "[sensor]\nid = \"tap1\"\n",
    "[capture]\ninterfaces = [\"eth0\", \"eth1\"]\nbpf = \"not port 22\"\nsnaplen = 128\n"
    "ring_bytes = 33554432\npromisc = true\ninbound_only = false\n",
    "[flows]\nmax_flows = 65536\nmax_frags = 1024\ntimeout_tcp = 60\ntimeout_udp = 30\n"
    "timeout_icmp = 30\ntimeout_other = 30\ntimeout_closed = 5\ntimeout_frag = 30\nstatus_interval = 60\n",
    "[archive]\ndir = \"/var/lib/flowtap/archive\"\nrotate_interval = 3600\nsize_cap = 536870912\n"
    "quota_bytes = 0\nmin_free_percent = 15.0\nmax_age = 0\ncommit_interval = 5.0\n",
    "[web]\nlisten = \"127.0.0.1:8080\"\n",
    "[export]\ncollectors = [\"ipfix+udp://127.0.0.1:4739\"]\nuniflow = true\n",
    "[alerts]\nfiles = [\"/var/log/suricata/eve.json\"]\nformat = \"eve\"\n"
    "state_file = \"/var/lib/flowtap/alerts/follow.json\"\npoll_interval = 0.5\nbatch = 1000\n",
    "[flows]\ntimeout_tcp = \"soon\"\n",
    "[flows]\nbogus = 1\n",
    "[archive]\ncommit_interval = 0.05\n",
]
