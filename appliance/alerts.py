"""IDS alerts kept beside the archives, and linked to sessions when asked.

Storage: one SQLite file per UTC hour of alert time, ``alerts-YYYYMMDDTHH0000Z.sqlite``, in the
archive directory beside ``flows-*.sqlite``. A sibling file rather than a table in the archive,
because alerts arrive late (a day's log imported the next morning) and closed archives are never
written again; and because the recorder is the archive's only writer. Each holds ``alerts`` (the
id, a 64-bit hash of the format and line, is the rowid: importing the same line twice stores it
once) and ``alert_info`` (schema version, the hour it covers). Rollback journal, so readers open it
``mode=ro`` from a read-only mount. Retention deletes an hour's alerts with the last archive that
overlaps it (``prune``, called by the archive writer).

Linking happens at query time, so an alert imported before its session's record was written links
once the record is there. A record links to an alert when (``LINK_RULE``, one SQL rule for every
direction): same protocol; same endpoints in either orientation (with ports for TCP, UDP and
SCTP; ICMP by addresses); the alert's time within [stime - 30 s, ltime + 30 s] of the record; and
the Community IDs equal when the alert carries one. Then every record of the same session links
too: a long session's Status records chain to its final record (``_chain``), so an alert on the
tenth minute of an hour-long transfer links all of its records (Arkime's rule, per session, is the
same window around the session's first and last packet).

Example::

    result = import_alerts("/var/lib/flowtap/archive", alert_formats.read(open("eve.json", "rb")))
    for a in list_alerts("/var/lib/flowtap/archive", lo=t0, hi=t1):
        print(a["msg"], len(sessions_of("/var/lib/flowtap/archive", a)))
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import operator
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from . import archive as _archive
from . import filter as _filter
from . import query
from .alert_types import PORT_PROTOS, Alert, row_of

SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^alerts-(\d{8}T\d{2})0000Z\.sqlite$")
HOUR = 3600
LAST_TIME = 253402300800.0    # 10000-01-01: hour files are named for years 1970-9999
WINDOW = 30.0                 # seconds around a record within which an alert's time links (Arkime's)
BATCH = 50_000                # alerts per transaction on import (and per linked count)
CACHE_KIB = 64 * 1024         # SQLite's page cache for imports and links (default 2 MiB)
BUSY_TIMEOUT = 10.0           # seconds an importer waits for another (the follower, a second import)

ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "INTEGER PRIMARY KEY"), ("time", "REAL NOT NULL"), ("gid", "INTEGER"), ("sid", "INTEGER"),
    ("rev", "INTEGER"), ("msg", "TEXT"), ("priority", "INTEGER"), ("classification", "TEXT"),
    ("proto", "INTEGER"), ("saddr", "TEXT"), ("sport", "INTEGER"), ("daddr", "TEXT"),
    ("dport", "INTEGER"), ("community_id", "TEXT"), ("flow_id", "INTEGER"), ("app_proto", "TEXT"),
    ("action", "TEXT"), ("format", "TEXT"), ("imported_at", "REAL"),
)
ALERT_NAMES = tuple(n for n, _ in ALERT_COLUMNS)
# Every read is by time (a range, an hour's alerts for a link) or by id (the rowid); host, port and
# sid tests run on those rows, so no other index is paid for on import.
ALERT_INDEXES = (("alerts_time", "alerts(time)"),)

# The link rule between an alert ``a`` and a session record ``f``: the only place it is written.
# ``reach`` widens the time window, to find the records of a long session around an alert.
_PORTS = ", ".join(str(p) for p in PORT_PROTOS)


def link_rule(reach: float = 0.0) -> str:
    w = WINDOW + reach
    # "+f.daddr": search records by their source (the initiator: a client, mostly) with the
    # (saddr, stime) index, never by their destination, which may be a server busy with everyone.
    return f"""f.proto = a.proto
    AND f.stime <= a.time + {w} AND f.ltime >= a.time - {w}
    AND ((f.saddr = a.saddr AND +f.daddr = a.daddr
          AND (a.proto NOT IN ({_PORTS}) OR a.sport IS NULL
               OR (f.sport = a.sport AND f.dport = a.dport)))
      OR (f.saddr = a.daddr AND +f.daddr = a.saddr
          AND (a.proto NOT IN ({_PORTS}) OR a.sport IS NULL
               OR (f.sport = a.dport AND f.dport = a.sport))))
    AND (a.community_id IS NULL OR a.community_id = f.community_id)"""


LINK_RULE = link_rule()
# How far from an alert the ``alert`` filter looks for the records of its session in other
# archives: a session's Status records further away than this link in ``sessions_of`` only.
SESSION_REACH = 2 * HOUR


class AlertStoreError(Exception):
    """The alert store cannot be read or written; the message says which file and why."""


@dataclasses.dataclass
class ImportResult:
    read: int = 0
    rejected: int = 0           # times no hour file can name (before 1970, after 9999, NaN)
    imported: int = 0
    duplicates: int = 0
    linked: int = 0
    unlinked: int = 0


# --- files --------------------------------------------------------------------------------------

def store_dir(path: str | os.PathLike[str]) -> Path:
    """The archive directory of ``path``: itself, or its ``archive/`` (a data directory)."""
    p = Path(path)
    if not _archive.list_archives(p) and (p / "archive").is_dir():
        return p / "archive"
    return p


def file_name(t: float) -> str:
    return datetime.fromtimestamp(hour_of(t), timezone.utc).strftime("alerts-%Y%m%dT%H0000Z.sqlite")


def hour_of(t: float) -> float:
    return math.floor(t / HOUR) * HOUR


def alert_files(directory: Path, lo: float = -math.inf, hi: float = math.inf) -> list[Path]:
    """The hour files of ``directory`` that may hold alerts timed in [lo, hi], oldest first."""
    out = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        m = NAME_RE.match(name)
        if not m:
            continue
        start = _hour_start(m)
        if start + HOUR > lo and start <= hi:
            path = directory / name
            if _archive.is_regular_file(path):             # a planted link is never followed
                out.append(path)
    return out


def _hour_start(m: re.Match) -> float:
    """The first second of the hour a file name (``NAME_RE`` match) covers."""
    return datetime.strptime(m.group(1), "%Y%m%dT%H").replace(tzinfo=timezone.utc).timestamp()


def _open_write(path: Path) -> sqlite3.Connection:
    new = not path.exists()
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    if new or not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alerts'").fetchone():
        conn.execute("BEGIN IMMEDIATE")
        cols = ", ".join(f"{n} {t}" for n, t in ALERT_COLUMNS)
        conn.execute(f"CREATE TABLE IF NOT EXISTS alerts ({cols})")
        for name, on in ALERT_INDEXES:
            conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")
        conn.execute("CREATE TABLE IF NOT EXISTS alert_info (key TEXT PRIMARY KEY, value)")
        m = NAME_RE.match(path.name)
        conn.executemany("INSERT OR IGNORE INTO alert_info VALUES (?, ?)", [
            ("schema_version", SCHEMA_VERSION), ("hour", m.group(1) if m else None),
            ("what", "IDS alerts imported by flowtap (flowtap alerts import / follow)")])
        conn.execute("COMMIT")
        _give_to_directory_owner(path)
    return conn


def _give_to_directory_owner(path: Path) -> None:
    """Root importing by hand makes files the follower and the recorder (user flowtap) must still
    write and delete: give them to the directory's owner."""
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    for p in (path, Path(f"{path}-journal")):
        try:
            os.chown(p, st.st_uid, st.st_gid)
        except FileNotFoundError:
            pass


def open_readonly(path: Path, deadline: float | None = None) -> sqlite3.Connection:
    """An hour file opened read-only (never created).

    :raises AlertStoreError: unreadable or not an alert file.
    """
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        conn.execute("SELECT 1 FROM alerts LIMIT 1")
    except sqlite3.Error as e:
        raise AlertStoreError(f"{path.name}: cannot read alerts ({e})") from None
    if deadline is not None:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, query.PROGRESS_STEPS)
    return conn


# --- import -------------------------------------------------------------------------------------

def _signed(hex_id: str) -> int:
    """The 16-hex-digit id as SQLite's signed 64-bit rowid."""
    v = int(hex_id, 16)
    return v - (1 << 64) if v >= 1 << 63 else v


def _hex(rowid: int) -> str:
    return f"{rowid & 0xFFFFFFFFFFFFFFFF:016x}"


def import_alerts(directory: str | os.PathLike[str], alerts: Iterable[Alert],
                  link: bool = True) -> ImportResult:
    """Store ``alerts`` in the hour files of ``directory`` (an alert already there is skipped),
    then count how many link to a session recorded so far.

    :param link: False skips the count (``linked``/``unlinked`` stay 0).
    :raises AlertStoreError: a file cannot be written (the batches before it are kept).
    """
    return import_rows(directory, map(row_of, alerts), link)


def import_rows(directory: str | os.PathLike[str], rows: Iterable[tuple],
                link: bool = True) -> ImportResult:
    """``import_alerts`` of the alerts' rows (``alert_types.ROW_FIELDS``, as
    ``alert_formats.read_rows`` gives them): batch by batch, each batch's links counted on a
    thread of their own while the next is read and written (``_LinkCounter``).

    :raises AlertStoreError: as ``import_alerts``.
    """
    directory = store_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = ImportResult()
    with _LinkCounter(directory, result) as counter:
        for batch in _batches(rows, result, time.time()):
            inserted = _write(directory, batch, result)
            if link:
                counter.submit(inserted)
    return result


def _batches(rows: Iterable[tuple], result: ImportResult,
             now: float) -> Iterator[dict[float, list[tuple]]]:
    """``rows`` with their import time (``ALERT_NAMES`` rows) by hour, BATCH at a time; a time no
    hour file can name is counted (``rejected``) and dropped."""
    pending: dict[float, list[tuple]] = {}
    n = 0
    imported_at = (now,)
    for row in rows:
        result.read += 1
        t = row[1]
        if not 0 <= t < LAST_TIME:               # also NaN
            result.rejected += 1
            continue
        pending.setdefault(hour_of(t), []).append(row + imported_at)
        n += 1
        if n >= BATCH:
            yield pending
            pending, n = {}, 0
    if pending:
        yield pending


class _LinkCounter:
    """Counts the links of each written batch (``count_linked``) on a thread of its own while the
    next batch is read and written. The count is SQLite's work (it takes the batch from the hour
    files just written, and seeks through the archives), done without the GIL: on the second
    core. One batch at a time: memory stays two batches."""

    def __init__(self, directory: Path, result: ImportResult):
        self.directory, self.result = directory, result
        self.pool: ThreadPoolExecutor | None = None
        self.running: tuple[Future, int] | None = None

    def __enter__(self) -> _LinkCounter:
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)       # a count still running ends first

    def submit(self, inserted: dict[Path, list[tuple]]) -> None:
        """Count the links of ``_write``'s rows, once the previous batch's count is added."""
        n = sum(map(len, inserted.values()))
        if not n:
            return
        self.wait()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="alert-links")
        self.running = (self.pool.submit(count_linked, self.directory, inserted), n)

    def wait(self) -> None:
        """Add the running count to the result."""
        if self.running is not None:
            future, n = self.running
            self.running = None
            linked = future.result()
            self.result.linked += linked
            self.result.unlinked += n - linked


_ID = operator.itemgetter(0)


def _write(directory: Path, pending: dict[float, list[tuple]],
           result: ImportResult) -> dict[Path, list[tuple]]:
    """One transaction per hour file; the rows actually inserted (not already there), by file."""
    inserted: dict[Path, list[tuple]] = {}
    marks = ", ".join("?" * len(ALERT_NAMES))
    for hour, rows in sorted(pending.items()):
        path = directory / file_name(hour)
        # Once each (a line twice in one batch), in id order: each insert lands beside the last
        # in the table's B-tree.
        new = sorted({row[0]: row for row in rows}.values(), key=_ID)
        try:
            conn = _open_write(path)
            try:
                conn.execute("BEGIN IMMEDIATE")
                # The ids already there, in one statement (the list as one JSON parameter).
                there = {x for (x,) in conn.execute(
                    "SELECT id FROM alerts WHERE id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps([row[0] for row in new]),))}
                if there:
                    new = [row for row in new if row[0] not in there]
                conn.executemany(f"INSERT INTO alerts VALUES ({marks})", new)
                conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise AlertStoreError(f"{path.name}: cannot write alerts ({e})") from None
        inserted[path] = new
        result.imported += len(new)
        result.duplicates += len(rows) - len(new)
    return inserted


# --- linking ------------------------------------------------------------------------------------

_LINK_COLUMNS = ("id", "time", "proto", "saddr", "sport", "daddr", "dport", "community_id", "sid", "gid")


@dataclasses.dataclass(frozen=True)
class _Span:
    """An archive and what bounds its records' times."""

    path: Path
    first: float
    last: float
    maxdur: float           # its longest record, with query's slack: bounds stime for the indexes


def _archives(directory: Path, lo: float, hi: float) -> list[_Span]:
    """The archives of ``directory`` that may hold a record overlapping [lo, hi], oldest first.
    A damaged or foreign file links nothing (``ra`` names it)."""
    out = []
    for path in _archive.list_archives(directory):
        try:
            st = path.stat()
        except OSError:
            continue
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _span_cache:
            if len(_span_cache) > 4096:
                _span_cache.clear()
            _span_cache[key] = _span(path)
        span = _span_cache[key]
        if span is not None and not (span.last < lo or span.first > hi):
            out.append(span)
    return out


_span_cache: dict[tuple[str, int, int], _Span | None] = {}    # an unchanged file, read once


def _span(path: Path) -> _Span | None:
    try:
        conn = query.connect(path)
    except query.QueryError:
        return None
    try:
        info = _archive.read_info(conn)
        if info.get("state") != "open" and info.get("records") == 0:
            return None
        first, last = info.get("first_stime"), info.get("last_ltime")
        first = -math.inf if first is None else first
        last = math.inf if last is None or info.get("state") == "open" else last
        return _Span(path, first, last, query.max_dur(conn, path, info) + query.DUR_SLACK)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _load_alerts(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """Alerts (``_LINK_COLUMNS`` values) into ``temp.a`` of a (read-only) archive connection."""
    conn.execute("DROP TABLE IF EXISTS temp.a")
    conn.execute(f"CREATE TEMP TABLE a ({', '.join(_LINK_COLUMNS)})")
    conn.executemany(f"INSERT INTO temp.a VALUES ({', '.join('?' * len(_LINK_COLUMNS))})", rows)


def _direct_sql(select: str, reach: float = 0.0) -> str:
    """Records ``f`` linked to the alerts of ``temp.a`` (with ``reach``: also the records of the
    same endpoints that far around). The lower stime bound lets the (saddr, stime) index serve
    each alert (``link_rule``)."""
    return (f"SELECT {select} FROM temp.a AS a JOIN {query.source()} AS f ON {link_rule(reach)}"
            f" AND f.stime >= a.time - {WINDOW + reach} - :maxdur")


def count_linked(directory: Path, inserted: dict[Path, list[tuple]]) -> int:
    """How many of the alerts just written (``ALERT_NAMES`` rows, by hour file) link to a session
    recorded so far."""
    times = [r[1] for rows in inserted.values() for r in rows]
    if not times:
        return 0
    linked: set[int] = set()
    for span in _archives(directory, min(times) - WINDOW, max(times) + WINDOW):
        linked |= _linked_ids(span, inserted)
    return len(linked)


_LINK_NAMES = ("id", "time", "proto", "saddr", "sport", "daddr", "dport", "community_id")   # LINK_RULE's
# By source address and time: the seeks into (saddr, stime) go through the index in order. EXISTS
# stops at an alert's first record: a count needs no more. One row: the GIL is taken back once.
_LINKED_SQL = (f"SELECT group_concat(a.id) FROM (SELECT * FROM temp.a ORDER BY saddr, time) AS a"
               f" WHERE EXISTS (SELECT 1 FROM {query.source()} AS f"
               f" WHERE {LINK_RULE} AND f.stime >= a.time - {WINDOW} - :maxdur)")


def _linked_ids(span: _Span, inserted: dict[Path, list[tuple]]) -> set[int]:
    """The ids of the alerts that link to a record of this archive (none if it cannot be read:
    ra names it)."""
    try:
        conn = query.connect(span.path)
    except query.QueryError:
        return set()                  # damaged since it was listed
    conn.isolation_level = None       # autocommit: a statement lets go of an hour file as it ends
    try:
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")     # index pages the seeks come back to
        # Not memory-mapped, though a map saves ~40% of this CPU: a read error (a failing SD card)
        # would then kill the import with SIGBUS instead of failing this archive's statement.
        conn.execute(f"CREATE TEMP TABLE a ({', '.join(_LINK_NAMES)})")
        for path, rows in inserted.items():
            _load_linkable(conn, path, rows, span.first - WINDOW, span.last + WINDOW)
        (ids,) = conn.execute(_LINKED_SQL, {"maxdur": span.maxdur}).fetchone()
    except sqlite3.Error:
        return set()
    finally:
        conn.close()
    return {int(x) for x in ids.split(",")} if ids else set()


def _load_linkable(conn: sqlite3.Connection, path: Path, rows: list[tuple], lo: float,
                   hi: float) -> None:
    """Into ``temp.a``: ``rows`` (just written to the hour file ``path``) timed in [lo, hi]. Copied
    from the file in one statement, not bound row by row from Python: a thread binding rows
    would wait for the GIL at each one while the importer parses."""
    try:
        conn.execute("ATTACH DATABASE ? AS h", (f"file:{urllib.parse.quote(str(path))}?mode=ro",))
        try:
            conn.execute(f"INSERT INTO temp.a SELECT {', '.join(_LINK_NAMES)} FROM h.alerts"
                         " WHERE id IN (SELECT value FROM json_each(?)) AND time >= ? AND time <= ?",
                         (orjson.dumps([r[0] for r in rows]), lo, hi))
            return
        finally:
            conn.execute("DETACH DATABASE h")
    except sqlite3.Error:
        pass                          # the file is gone (retention) or busy: the rows from here
    conn.executemany(f"INSERT INTO temp.a VALUES ({', '.join('?' * len(_LINK_NAMES))})",
                     [_LINK_VALUES(r) for r in rows if lo <= r[1] <= hi])


_LINK_VALUES = operator.itemgetter(*(ALERT_NAMES.index(n) for n in _LINK_NAMES))


def _link_row(a: dict[str, Any]) -> tuple:
    return (_signed(a["id"]), a["time"], a["proto"], a["saddr"], a["sport"], a["daddr"],
            a["dport"], a["community_id"], a["sid"], a["gid"])


def sessions_of(directory: str | os.PathLike[str], alert: dict[str, Any],
                deadline: float | None = None) -> list[dict[str, Any]]:
    """The session records ``alert`` links to, oldest first (``sessions_for`` of one alert).

    :raises query.QueryTimeout: past ``deadline`` (a ``time.monotonic()`` value).
    """
    return sessions_for(directory, [alert], deadline)[alert["id"]]


def sessions_for(directory: str | os.PathLike[str], alerts: Sequence[dict[str, Any]],
                 deadline: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """For each alert (by id), the session records it links to, oldest first: those the link rule
    finds, and the other records of their sessions. In bulk: one join per archive for the rule,
    one for the records of the same keys around them; a session that goes on beyond those is
    followed record by record (``_chain``).

    :raises query.QueryTimeout: past ``deadline``.
    """
    directory = store_dir(directory)
    out: dict[str, dict[tuple[str, int], dict[str, Any]]] = {a["id"]: {} for a in alerts}
    if not alerts:
        return {}
    by_id = {_signed(a["id"]): a["id"] for a in alerts}
    times = [a["time"] for a in alerts]
    for span in _archives(directory, min(times) - WINDOW, max(times) + WINDOW):
        mine = [_link_row(a) for a in alerts
                if span.first - WINDOW <= a["time"] <= span.last + WINDOW]
        if not mine:
            continue
        for row in _query(span, deadline, _direct_sql(f"a.id, f.rid, {_F_SELECT}"),
                          {"maxdur": span.maxdur}, rows=mine):
            r = _record(span.path.name, row[1:])
            out[by_id[row[0]]][(r["_file"], r["_rid"])] = r
    _add_sessions(directory, out, deadline)
    result = {}
    for alert_id, found in out.items():
        recs = sorted(found.values(), key=lambda r: (r["stime"], r["_file"], r["_rid"]))
        result[alert_id] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]
    return result


def _query(span: _Span, deadline: float | None, sql: str, params: dict[str, Any],
           rows: list[tuple] | None = None, keys: list[tuple] | None = None) -> list[tuple]:
    """Run ``sql`` on an archive with ``temp.a`` (alert rows) or ``temp.k`` (session keys)."""
    conn = query.connect(span.path, deadline)
    try:
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")     # index pages the seeks come back to
        if rows is not None:
            _load_alerts(conn, rows)
        if keys is not None:
            conn.execute("CREATE TEMP TABLE k (srcid, proto, saddr, sport, daddr, dport, lo, hi)")
            conn.executemany("INSERT INTO temp.k VALUES (?, ?, ?, ?, ?, ?, ?, ?)", keys)
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error as e:              # interrupted by the deadline, or a damaged archive
        if "interrupted" in str(e):
            raise query.QueryTimeout("the query ran past its time limit") from None
        raise AlertStoreError(f"{span.path.name}: {e}") from None
    finally:
        conn.close()


def _add_sessions(directory: Path, out: dict[str, dict[tuple[str, int], dict[str, Any]]],
                  deadline: float | None) -> None:
    """Add to each alert's records the other records of their sessions: every record of the same
    key within CHAIN_STEP around them is read in one join per archive, chains are cut after each
    final (non-Status) record, and a chain that reaches the edge of what was read is followed on
    by ``_chain``."""
    direct = [r for found in out.values() for r in found.values()]
    if not direct:
        return
    keys = {}
    for r in direct:
        k = _key(r)
        lo, hi = keys.get(k, (math.inf, -math.inf))
        keys[k] = (min(lo, r["stime"] - CHAIN_STEP), max(hi, r["ltime"] + CHAIN_STEP))
    lo = min(v[0] for v in keys.values())
    hi = max(v[1] for v in keys.values())
    same: dict[tuple, list[dict[str, Any]]] = {}
    sql = (f"SELECT f.rid, {_F_SELECT} FROM temp.k AS k JOIN {query.source()} AS f"
           # By the source address (never the busy server's address or port, see link_rule).
           " ON f.saddr = k.saddr AND f.stime >= k.lo AND f.stime <= k.hi AND +f.daddr = k.daddr"
           " AND f.srcid IS k.srcid AND f.proto IS k.proto AND f.sport IS k.sport AND +f.dport IS k.dport")
    for span in _archives(directory, lo, hi):
        for row in _query(span, deadline, sql, {}, keys=[(*k, a, b) for k, (a, b) in keys.items()]):
            r = _record(span.path.name, row)
            same.setdefault(_key(r), []).append(r)
    chain_of: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for k, recs in same.items():
        recs.sort(key=lambda r: (r["stime"], r["_file"], r["_rid"]))
        run: list[dict[str, Any]] = []
        for r in recs:
            run.append(r)
            if r["cause"] != "Status":
                for x in run:
                    chain_of[(x["_file"], x["_rid"])] = run
                run = []
        for x in run:                             # ends in a Status record: goes on beyond
            chain_of[(x["_file"], x["_rid"])] = run
    for found in out.values():
        for r in list(found.values()):
            run = chain_of.get((r["_file"], r["_rid"]), [r])
            k = _key(r)
            edge_lo, edge_hi = keys[k]
            # Where _chain would look beyond what was read, it looks (exactly the same chain).
            if run[0]["stime"] - CHAIN_STEP < edge_lo or (
                    run[-1]["cause"] == "Status" and run[-1]["ltime"] + CHAIN_STEP > edge_hi):
                run = [r] + _chain(directory, r, deadline)
            for x in run:
                found.setdefault((x["_file"], x["_rid"]), x)


def _key(r: dict[str, Any]) -> tuple:
    return (r["srcid"], r["proto"], r["saddr"], r["sport"], r["daddr"], r["dport"])


_F_SELECT = ", ".join(f"f.{k}" for k in query.RECORD_ORDER)


def _record(file: str, row: Sequence[Any]) -> dict[str, Any]:
    r = dict(zip(query.RECORD_ORDER, row[1:]))
    r["_file"], r["_rid"] = file, row[0]
    return r


CHAIN_STEP = 2 * HOUR       # the farthest a session's next record may start (status intervals)


def _chain(directory: Path, r: dict[str, Any], deadline: float | None = None) -> list[dict[str, Any]]:
    """The other records of ``r``'s session: Status records chain to the next record of the same
    key (srcid, protocol, addresses, ports, same orientation) until a final record, across archives."""
    key = _key(r)
    out = []
    cur = r
    while (prev := _neighbour(directory, key, cur, -1, deadline)) is not None and prev["cause"] == "Status":
        out.append(prev)
        cur = prev
    cur = r
    while cur["cause"] == "Status" and (nxt := _neighbour(directory, key, cur, 1, deadline)) is not None:
        out.append(nxt)
        cur = nxt
    return out


def _neighbour(directory: Path, key: tuple, r: dict[str, Any], step: int,
               deadline: float | None) -> dict[str, Any] | None:
    """The record of ``key`` just before (step -1) or after (+1) ``r`` in (stime, archive, rowid)
    order, within CHAIN_STEP of it."""
    if step < 0:
        lo, hi = r["stime"] - CHAIN_STEP, r["stime"]
    else:
        lo, hi = r["stime"], r["ltime"] + CHAIN_STEP
    # Order within one stime: the archive's name, then the rowid.
    tie = ("(f.stime < :t OR (f.stime = :t AND (:file > :here OR (:file = :here AND f.rid < :rid))))"
           if step < 0 else
           "(f.stime > :t OR (f.stime = :t AND (:file < :here OR (:file = :here AND f.rid > :rid))))")
    desc = "DESC" if step < 0 else ""
    sql = (f"SELECT f.rid, {_F_SELECT} FROM {query.source()} AS f"
           " WHERE f.srcid IS :k0 AND f.proto IS :k1 AND f.saddr IS :k2 AND f.sport IS :k3"
           " AND +f.daddr IS :k4 AND +f.dport IS :k5 AND f.stime >= :lo AND f.stime <= :hi"
           f" AND {tie} ORDER BY f.stime {desc}, f.rid {desc} LIMIT 1")
    params = {f"k{i}": v for i, v in enumerate(key)} | {
        "lo": lo, "hi": hi, "t": r["stime"], "file": r["_file"], "rid": r["_rid"]}
    best = None
    for span in _archives(directory, lo, hi):
        try:
            rows = _query(span, deadline, sql, params | {"here": span.path.name})
        except AlertStoreError:
            continue                    # a damaged archive: the chain goes on in the others
        if not rows:
            continue
        cand = _record(span.path.name, rows[0])
        order = (cand["stime"], cand["_file"], cand["_rid"])
        if best is None or (order > (best["stime"], best["_file"], best["_rid"])) == (step < 0):
            best = cand
    return best


# --- the filter primitives `alert` and `sid N` over archives -----------------------------------

def linked_rowids(directory: Path, conn: sqlite3.Connection, path: Path, first: float, last: float,
                  maxdur: float) -> None:
    """Fill ``temp.ft_linked(rid, sid, gid)`` of an archive connection with the records some
    alert links to (what ``filter.Linked`` compiles to): records the rule links directly, and
    records of the same endpoints within SESSION_REACH of an alert whose session (``_chain``,
    across archives) the rule links."""
    conn.execute("DROP TABLE IF EXISTS temp.ft_linked")
    conn.execute("CREATE TEMP TABLE ft_linked (rid INTEGER, sid INTEGER, gid INTEGER)")
    lo, hi = first - WINDOW - maxdur - SESSION_REACH, last + WINDOW + SESSION_REACH
    rows = [row for f in alert_files(directory, lo, hi)
            for row in _rows_of(f, f"SELECT {', '.join(_LINK_COLUMNS)} FROM alerts"
                                   " WHERE time >= ? AND time <= ?", (lo, hi))]
    if not rows:
        return
    _load_alerts(conn, rows)
    direct = f"a.time BETWEEN f.stime - {WINDOW} AND f.ltime + {WINDOW}"
    found = conn.execute(_direct_sql(f"a.time, a.sid, a.gid, {direct}, f.rid, {_F_SELECT}",
                                     SESSION_REACH), {"maxdur": maxdur}).fetchall()
    by_rid = {row[4]: row[4:] for row in found}
    linked = set()
    spans: dict[int, tuple[float, float]] = {}      # rid -> its session's first stime, last ltime
    for t, sid, gid, is_direct, rid, *_ in found:
        if not is_direct:
            if rid not in spans:
                r = _record(path.name, by_rid[rid])
                chain = [r] + _chain(directory, r)
                span = (min(c["stime"] for c in chain), max(c["ltime"] for c in chain))
                for c in chain:
                    if c["_file"] == path.name:
                        spans[c["_rid"]] = span
            lo_s, hi_s = spans[rid]
            if not lo_s - WINDOW <= t <= hi_s + WINDOW:
                continue
        linked.add((rid, sid, gid))
    conn.executemany("INSERT INTO temp.ft_linked VALUES (?, ?, ?)", sorted(linked))
    conn.execute("CREATE INDEX temp.ft_linked_rid ON ft_linked(rid)")


# --- reading alerts -----------------------------------------------------------------------------

class AlertRow(dict):
    """An alert as listed: its columns, ``id`` as 16 hex digits; keys a session filter may name
    but an alert has not read as None, and ``stime``/``ltime`` are its time (so ``-t`` applies)."""

    def __missing__(self, key: str) -> Any:
        return None


def _row(names: Sequence[str], values: Sequence[Any]) -> AlertRow:
    r = AlertRow(zip(names, values))
    r["id"] = _hex(r["id"])
    r["stime"] = r["ltime"] = r["time"]
    return r


def _alert_linked(r: dict[str, Any], sid: int | None, gid: int | None) -> bool:
    """``alert``/``sid N``/``gid N`` said of an alert itself."""
    return (sid is None or r["sid"] == sid) and (gid is None or r["gid"] == gid)


def parse_filter(text: str) -> Any:
    """ra's filter language over alerts: protocol, addresses, ports, ``sid N``, ``gid N``.

    :raises filter.FilterError: with the column of the bad part.
    """
    return _filter.parse(text)


def _select_sql(lo: float | None, hi: float | None, priority: int | None,
                ast: Any) -> tuple[str, list[Any]]:
    where, params = ["1"], []
    if lo is not None:
        where.append("time >= ?")
        params.append(lo)
    if hi is not None:
        where.append("time <= ?")
        params.append(hi)
    if priority is not None:
        where.append("priority IS NOT NULL AND priority <= ?")
        params.append(priority)
    b = query.TimeBounds.of(ast)
    for bound, op in ((max(b.stime_lo, b.ltime_lo), ">="), (min(b.stime_hi, b.ltime_hi), "<=")):
        if math.isfinite(bound):
            where.append(f"time {op} ?")
            params.append(bound)
    return " AND ".join(where), params


def _time_bounds(lo: float | None, hi: float | None, ast: Any) -> tuple[float, float]:
    b = query.TimeBounds.of(ast)
    return (max(-math.inf if lo is None else lo, b.stime_lo, b.ltime_lo),
            min(math.inf if hi is None else hi, b.stime_hi, b.ltime_hi))


def iter_alerts(directory: str | os.PathLike[str], ast: Any = None, lo: float | None = None,
                hi: float | None = None, priority: int | None = None,
                deadline: float | None = None) -> Iterator[AlertRow]:
    """Alerts of one directory in time order (then id) that match the filter.

    :raises AlertStoreError: an alert file cannot be read (after the alerts of those before it).
    :raises query.QueryTimeout: past ``deadline``.
    """
    directory = store_dir(directory)
    keep = _filter.compile_predicate(ast, linked=_alert_linked)
    where, params = _select_sql(lo, hi, priority, ast)
    for path in alert_files(directory, *_time_bounds(lo, hi, ast)):
        with _reading(path, deadline) as conn:
            cur = conn.execute(f"SELECT {', '.join(ALERT_NAMES)} FROM alerts WHERE {where}"
                               " ORDER BY time, id", params)
            for values in cur:
                r = _row(ALERT_NAMES, values)
                if keep(r):
                    yield r


def _rows_of(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """``sql``'s rows from one hour file; none when it cannot be read (what links or is found
    goes on without it; listing it names it: ``iter_alerts``)."""
    try:
        with _reading(path, None) as conn:
            return conn.execute(sql, params).fetchall()
    except AlertStoreError:
        return []


@contextlib.contextmanager
def _reading(path: Path, deadline: float | None) -> Iterator[sqlite3.Connection]:
    """An hour file open read-only; SQLite's errors while it is read become ours.

    :raises AlertStoreError: naming the file. :raises query.QueryTimeout: past ``deadline``.
    """
    conn = open_readonly(path, deadline)
    try:
        yield conn
    except sqlite3.OperationalError as e:
        if "interrupted" in str(e):
            raise query.QueryTimeout("the query ran past its time limit") from None
        raise AlertStoreError(f"{path.name}: {e}") from None
    except sqlite3.Error as e:
        raise AlertStoreError(f"{path.name}: {e}") from None
    finally:
        conn.close()


def list_alerts(directory: str | os.PathLike[str], ast: Any = None, lo: float | None = None,
                hi: float | None = None, priority: int | None = None, limit: int | None = None,
                offset: int = 0, deadline: float | None = None) -> list[AlertRow]:
    """``iter_alerts`` from ``offset``, at most ``limit`` of them."""
    it = iter_alerts(directory, ast, lo, hi, priority, deadline)
    stop = None if limit is None else offset + limit
    return list(itertools.islice(it, offset, stop))


def _time_only_sql(ast: Any) -> tuple[str, list[Any]] | None:
    """The filter as SQL over ``alerts.time`` when it only bounds time (a ``-t`` range, or none);
    None when it tests anything else (then Python applies it to each alert)."""
    parts, params = ["1"], []
    for node in query.conjuncts(ast):
        if not (isinstance(node, _filter.Compare) and node.key in ("stime", "ltime")
                and isinstance(node.value, (int, float)) and node.op in ("gt", "ge", "lt", "le", "eq")):
            return None
        parts.append(f"time {_filter.OPS[node.op].replace('==', '=')} ?")
        params.append(node.value)
    return " AND ".join(parts), params


def _aggregate(directory: str | os.PathLike[str], select: str, ast: Any, lo: float | None,
               hi: float | None, priority: int | None, deadline: float | None,
               group: str = "") -> Iterator[tuple]:
    """``SELECT {select} FROM alerts WHERE (the selection) {group}`` of each hour file (the
    filter must bound only time: ``_time_only_sql``)."""
    directory = store_dir(directory)
    where, params = _select_sql(lo, hi, priority, None)
    t_where, t_params = _time_only_sql(ast)
    for path in alert_files(directory, *_time_bounds(lo, hi, ast)):
        with _reading(path, deadline) as conn:
            yield from conn.execute(f"SELECT {select} FROM alerts WHERE {where} AND {t_where} {group}",
                                    params + t_params).fetchall()


def count_alerts(directory: str | os.PathLike[str], ast: Any = None, lo: float | None = None,
                 hi: float | None = None, priority: int | None = None,
                 deadline: float | None = None) -> int:
    """How many alerts ``iter_alerts`` would give (counted in SQL when the filter bounds only time)."""
    if _time_only_sql(ast) is not None:
        return sum(n for (n,) in _aggregate(directory, "count(*)", ast, lo, hi, priority, deadline))
    return sum(1 for _ in iter_alerts(directory, ast, lo, hi, priority, deadline))


def signature_counts(directory: str | os.PathLike[str], ast: Any = None, lo: float | None = None,
                     hi: float | None = None, priority: int | None = None, limit: int = 20,
                     deadline: float | None = None) -> list[dict[str, Any]]:
    """Alerts per signature (gid, sid), most frequent first: gid, sid, rev, msg, priority, count
    (the highest rev, a message, the most severe priority)."""
    if _time_only_sql(ast) is not None:
        rows = _aggregate(directory, "gid, sid, max(rev), max(msg), min(priority), count(*)",
                          ast, lo, hi, priority, deadline, group="GROUP BY gid, sid")
    else:
        rows = ((a["gid"], a["sid"], a["rev"], a["msg"], a["priority"], 1)
                for a in iter_alerts(directory, ast, lo, hi, priority, deadline))
    return count_signatures(rows)[:limit]


def count_signatures(rows: Iterable[tuple]) -> list[dict[str, Any]]:
    """(gid, sid, rev, msg, priority, count) rows merged per signature, most frequent first: the
    highest rev, a message, the most severe priority (for ``signature_counts`` and a page's list)."""
    counts: dict[tuple[int, int], dict[str, Any]] = {}
    for gid, sid, rev, msg, prio, n in rows:
        c = counts.setdefault((gid, sid), {"gid": gid, "sid": sid, "rev": rev, "msg": msg,
                                           "priority": prio, "count": 0})
        c["count"] += n
        c["rev"] = max(c["rev"] or 0, rev or 0)
        c["msg"] = c["msg"] or msg
        if prio is not None and (c["priority"] is None or prio < c["priority"]):
            c["priority"] = prio
    return sorted(counts.values(), key=lambda c: (-c["count"], c["gid"] or 0, c["sid"] or 0))


ID_RE = re.compile(r"^[0-9a-f]{16}$")


def find(directory: str | os.PathLike[str], alert_id: str) -> AlertRow | None:
    """The alert with this id (16 hex digits), or None."""
    if not ID_RE.match(alert_id or ""):
        return None
    directory = store_dir(directory)
    for path in alert_files(directory):
        for values in _rows_of(path, f"SELECT {', '.join(ALERT_NAMES)} FROM alerts WHERE id = ?",
                               (_signed(alert_id),)):
            return _row(ALERT_NAMES, values)
    return None


def around_ast(alert: dict[str, Any], seconds: float = 900) -> Any:
    """Every session of either host of ``alert`` that overlaps its time ± ``seconds``."""
    t = alert["time"]
    hosts = []
    for addr in dict.fromkeys(a for a in (alert["saddr"], alert["daddr"]) if a):
        hosts += [_filter.Compare("saddr", "eq", addr), _filter.Compare("daddr", "eq", addr)]
    when = _filter.And(_filter.Compare("stime", "le", t + seconds),
                       _filter.Compare("ltime", "ge", t - seconds))
    if not hosts:
        return _filter.And(when, _filter.Const(False))
    return _filter.And(when, functools.reduce(_filter.Or, hosts))


def alerts_for_records(directory: str | os.PathLike[str],
                       records: Sequence[dict[str, Any]]) -> list[list[AlertRow]]:
    """For each record (as ``query`` reads them), the alerts the rule links to it directly: for a
    page's rows, not a whole result. The rule runs in SQLite over the two lists, as everywhere."""
    directory = store_dir(directory)
    if not records:
        return []
    lo = min(r["stime"] for r in records) - WINDOW
    hi = max(r["ltime"] for r in records) + WINDOW
    found = list(itertools.chain.from_iterable(
        iter_alerts_file(p, lo, hi) for p in alert_files(directory, lo, hi)))
    out: list[list[AlertRow]] = [[] for _ in records]
    if not found:
        return out
    with sqlite3.connect(":memory:") as conn:
        conn.execute("CREATE TABLE a (i, time, proto, saddr, sport, daddr, dport, community_id)")
        conn.execute("CREATE TABLE f (i, stime, ltime, proto, saddr, sport, daddr, dport, community_id)")
        conn.executemany("INSERT INTO a VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            (i, *(x[k] for k in ("time", "proto", "saddr", "sport", "daddr", "dport", "community_id")))
            for i, x in enumerate(found)])
        conn.executemany("INSERT INTO f VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (i, *(r.get(k) for k in ("stime", "ltime", "proto", "saddr", "sport", "daddr", "dport",
                                     "community_id"))) for i, r in enumerate(records)])
        for fi, ai in conn.execute(f"SELECT f.i, a.i FROM a, f WHERE {LINK_RULE} ORDER BY f.i, a.i"):
            out[fi].append(found[ai])
    return out


def iter_alerts_file(path: Path, lo: float = -math.inf, hi: float = math.inf) -> Iterator[AlertRow]:
    """The alerts of one hour file timed in [lo, hi] (none if it cannot be read)."""
    for values in _rows_of(path, f"SELECT {', '.join(ALERT_NAMES)} FROM alerts"
                                 " WHERE time >= ? AND time <= ? ORDER BY time, id",
                           (max(lo, -1e300), min(hi, 1e300))):
        yield _row(ALERT_NAMES, values)


# --- retention ----------------------------------------------------------------------------------

def prune(directory: Path, before: float) -> list[Path]:
    """Delete the hour files wholly before ``before`` (the oldest record still archived)."""
    removed = []
    for path in alert_files(directory, -math.inf, before - HOUR):
        if _hour_start(NAME_RE.match(path.name)) + HOUR <= before:
            for extra in (path, Path(f"{path}-journal")):
                extra.unlink(missing_ok=True)
            removed.append(path)
    return removed


def recorded_span(directory: str | os.PathLike[str]) -> tuple[float, float] | None:
    """First stime and last ltime over the archives of ``directory`` (None: no records yet)."""
    directory = store_dir(directory)
    lo, hi = math.inf, -math.inf
    for path in _archive.list_archives(directory):
        try:
            conn = query.connect(path)
        except query.QueryError:
            continue
        try:
            info = _archive.read_info(conn)
            first, last = info.get("first_stime"), info.get("last_ltime")
            if info.get("state") == "open" and (first is None or last is None):
                first, last = conn.execute("SELECT min(stime), max(ltime) FROM flows").fetchone()
            if first is not None:
                lo = min(lo, first)
            if last is not None:
                hi = max(hi, last)
        except sqlite3.Error:
            continue
        finally:
            conn.close()
    return (lo, hi) if lo <= hi else None
