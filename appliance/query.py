"""Read-only SQL over flowtap archives: which files, which rows, and racluster as a GROUP BY.

Every archive is opened read-only (``archive.open_readonly``). A query names the files (a file, or
a directory of ``flows-*.sqlite``), skips those whose ``archive_info`` time span cannot meet the
``-t`` range, and runs one parameterised statement per file: the filter compiled by
``filter.compile_sql`` plus a ``stime`` range derived from the time conditions, so that SQLite
searches the ``flows_stime`` index (or ``flows_saddr``/``flows_daddr`` for hosts) instead of
scanning. Records come back as dicts in rowid order per file and files in name order; they carry
the keys of a metered record (``capture.to_record``), in the same order.

``cluster_archives`` merges by racluster ``-m`` keys in SQL: one GROUP BY per file computes each
group's merged record with ``cluster.Clusterer``'s rules (sums, first and last rows found by
rowid, the last non-NULL value of each "last value" column, flag letters OR'd, ...), and the
partial records of the files are merged in file order by ``Clusterer`` itself. The result equals
what the Python clusterer makes of the same records, field for field and in the same order. Where
a group holds values whose merge SQL does not reproduce exactly (``_SIZE_ODD``, ``_FLGS_ODD``),
it returns None and the caller clusters in Python.

Identifiers in SQL come only from ``IDENTIFIERS``; values are always parameters. A time limit
(``time_limit`` seconds, enforced by a SQLite progress handler) stops a long query with
``QueryTimeout``.

Example::

    ast = filter.parse("host 10.0.0.1 and tcp")
    for rec in read_records("/var/lib/flowtap/archive", ast, time_limit=10):
        print(rec["stime"], rec["daddr"])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from . import archive as _archive
from . import cluster as _cluster
from . import fields as _fields
from . import filter as _filter
from . import record as _record

# Record keys in the order a metered record has them (appliance/record.py's columns).
RECORD_ORDER: tuple[str, ...] = _record.NAMES
# The only identifiers SQL may contain: archive columns and the derived totals.
IDENTIFIERS: frozenset[str] = frozenset(_archive.FLOW_NAMES) | frozenset(_archive.DERIVED)
PROGRESS_STEPS = 20_000          # SQLite VM steps between time-limit checks
DUR_SLACK = 1.0                  # seconds added to the widest record when bounding stime
_max_dur_cache: dict[tuple[str, int, int], float] = {}
T = TypeVar("T")
log = logging.getLogger(__name__)


class QueryError(Exception):
    """An archive that cannot be read (missing, corrupt, not flowtap's, newer schema)."""


class QueryTimeout(QueryError):
    """A query ran past its time limit."""


def ident(name: str) -> str:
    """``name`` itself if it is a whitelisted column of ``source()``.

    :raises ValueError: for anything else.
    """
    if name not in IDENTIFIERS:
        raise ValueError(f"{name!r} is not an archive column")
    return name


def source(indexed: bool = True) -> str:
    """The flows table with its rowid as ``rid`` and the derived totals as columns (SQLite
    flattens this subquery, so the table's indexes still serve the WHERE clause).

    :param indexed: False forces a full scan (``NOT INDEXED``).
    """
    derived = ", ".join(f"({expr}) AS {ident(name)}" for name, expr in _archive.DERIVED.items())
    return f"(SELECT rowid AS rid, *, {derived} FROM flows{'' if indexed else ' NOT INDEXED'})"


_SELECT = ", ".join(ident(k) for k in RECORD_ORDER)


# --- files --------------------------------------------------------------------------------------

def archive_files(path: str | os.PathLike[str]) -> list[Path]:
    """The archive files ``-r PATH`` names: the file itself, or a directory's ``flows-*.sqlite``
    (or those of its ``archive/`` subdirectory, the data directory layout), oldest first.

    :raises QueryError: the path does not exist, or a directory holds no archives.
    """
    p = Path(path)
    if p.is_dir():
        files = _archive.list_archives(p) or _archive.list_archives(p / "archive")
        if not files:
            raise QueryError("no flowtap archives (flows-*.sqlite) in this directory")
        return files
    if not p.exists():
        raise QueryError("No such file or directory")
    return [p]


def connect(path: str | os.PathLike[str], deadline: float | None = None) -> sqlite3.Connection:
    """Open one archive read-only, check it is flowtap's, install the filter's SQL functions.

    :param deadline: ``time.monotonic()`` value after which statements are interrupted.
    :raises QueryError: missing, unreadable, corrupt or foreign file.
    """
    try:
        conn = _archive.open_readonly(path)
    except _archive.ArchiveError as e:
        raise QueryError(str(e).removeprefix(f"{Path(path)}: ")) from None
    except (sqlite3.Error, OSError) as e:
        raise QueryError(f"cannot open: {e}") from None
    try:
        _check_schema(conn)
    except QueryError:
        conn.close()
        raise
    _filter.register_sql_functions(conn)
    conn.create_function("ft_mask", 2, _cluster._mask, deterministic=True)
    if deadline is not None:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
    return conn


def _check_schema(conn: sqlite3.Connection) -> None:
    try:
        info = _archive.read_info(conn)
        have = {row[1] for row in conn.execute("PRAGMA table_info(flows)")}
    except (sqlite3.Error, ValueError) as e:
        if isinstance(e, sqlite3.Error) and _archive.is_damage(e):
            raise QueryError(f"damaged archive ({e})") from None
        raise QueryError(f"not a flowtap archive ({e})") from None
    version = info.get("schema_version")
    if not isinstance(version, int) or version > _archive.SCHEMA_VERSION:
        raise QueryError(f"archive schema version {version!r} is not one this flowtap reads "
                         f"(up to {_archive.SCHEMA_VERSION})")
    missing = [n for n in _archive.FLOW_NAMES if n not in have]
    if missing:
        raise QueryError(f"not a flowtap archive (flows lacks {', '.join(missing)})")


def set_time_limit(conn: sqlite3.Connection, seconds: float | None) -> None:
    """Interrupt statements on ``conn`` that are still running ``seconds`` from now (None: no limit).

    An interrupted statement raises ``sqlite3.OperationalError("interrupted")``; the functions of
    this module turn that into ``QueryTimeout``.
    """
    if seconds is None:
        conn.set_progress_handler(None, 0)
        return
    deadline = time.monotonic() + seconds
    conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)


def _deadline(time_limit: float | None) -> float | None:
    return None if time_limit is None else time.monotonic() + time_limit


def _sql_error(e: sqlite3.Error) -> QueryError:
    if isinstance(e, sqlite3.OperationalError) and "interrupt" in str(e):
        return QueryTimeout("query time limit reached")
    return QueryError(str(e))


# --- the WHERE clause ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TimeBounds:
    """Inclusive bounds on stime/ltime implied by a filter (the ``-t`` range, ``stime gt N``...)."""

    stime_lo: float = -math.inf
    stime_hi: float = math.inf
    ltime_lo: float = -math.inf
    ltime_hi: float = math.inf

    @classmethod
    def of(cls, ast: Any) -> TimeBounds:
        """Collect the stime/ltime comparisons that every matching record must satisfy."""
        b = {"stime_lo": -math.inf, "stime_hi": math.inf, "ltime_lo": -math.inf,
             "ltime_hi": math.inf}
        for node in conjuncts(ast):
            if not (isinstance(node, _filter.Compare) and node.key in ("stime", "ltime")
                    and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)):
                continue
            if node.op in ("gt", "ge", "eq"):
                b[f"{node.key}_lo"] = max(b[f"{node.key}_lo"], node.value)
            if node.op in ("lt", "le", "eq"):
                b[f"{node.key}_hi"] = min(b[f"{node.key}_hi"], node.value)
        return cls(**b)

    def misses(self, first_stime: float, last_ltime: float) -> bool:
        """True if no record of a file spanning [first_stime, last_ltime] can match."""
        return (self.stime_hi < first_stime or self.ltime_hi < first_stime
                or self.stime_lo > last_ltime or self.ltime_lo > last_ltime)


def uses_alerts(ast: Any) -> bool:
    """True if the filter names alerts (``alert``, ``sid N``, ``gid N``). Without recursion: a
    list of thousands of hosts is a chain that deep."""
    stack = [ast]
    while stack:
        node = stack.pop()
        if isinstance(node, (_filter.And, _filter.Or)):
            stack += [node.left, node.right]
        elif isinstance(node, _filter.Not):
            stack.append(node.expr)
        elif isinstance(node, _filter.Linked):
            return True
    return False


def prepare_alert_links(conn: sqlite3.Connection, path: Path, info: dict[str, Any] | None = None) -> None:
    """Fill ``temp.ft_linked`` of a connection to the archive ``path``: what ``alert``, ``sid N``
    and ``gid N`` read (``alerts.linked_rowids``, from the alert store beside the archive)."""
    from . import alerts

    info = _archive.read_info(conn) if info is None else info
    first, last = info.get("first_stime"), info.get("last_ltime")
    alerts.linked_rowids(path.parent, conn, path, -math.inf if first is None else first,
                         math.inf if last is None or info.get("state") == "open" else last,
                         max_dur(conn, path, info) + DUR_SLACK)


def conjuncts(ast: Any) -> Iterator[Any]:
    if isinstance(ast, _filter.And):
        yield from conjuncts(ast.left)
        yield from conjuncts(ast.right)
    elif ast is not None:
        yield ast


def max_dur(conn: sqlite3.Connection, path: Path, info: dict[str, Any]) -> float:
    """The longest record of an archive: ``archive_info.max_dur`` if recorded, else measured once
    per process for a closed (unchanging) file."""
    if isinstance(info.get("max_dur"), (int, float)):
        return float(info["max_dur"])
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _max_dur_cache:
        value = conn.execute("SELECT max(ltime - stime) FROM flows").fetchone()[0] or 0.0
        if info.get("state") == "open":
            return value
        _max_dur_cache[key] = value
    return _max_dur_cache[key]


def stime_range(conn: sqlite3.Connection, path: Path, bounds: TimeBounds,
                info: dict[str, Any]) -> tuple[float, float]:
    """The stime interval that holds every record matching ``bounds`` (what the index searches)."""
    lo, hi = bounds.stime_lo, min(bounds.stime_hi, bounds.ltime_hi)
    first = info.get("first_stime")
    if bounds.ltime_lo > lo and (first is None or bounds.ltime_lo > first):
        lo = max(lo, bounds.ltime_lo - max_dur(conn, path, info) - DUR_SLACK)
    return lo, hi


def where_clause(ast: Any, stime_lo: float = -math.inf,
                 stime_hi: float = math.inf) -> tuple[str, list[Any]]:
    """``(sql, params)`` for the filter AST, ANDed with an stime range when one is finite."""
    sql, params = _filter.compile_sql(ast)
    parts, args = [], []
    if stime_lo > -math.inf:
        parts.append("stime >= ?")
        args.append(stime_lo)
    if stime_hi < math.inf:
        parts.append("stime <= ?")
        args.append(stime_hi)
    if sql != "1" or not parts:
        parts.append(sql)
        args.extend(params)
    return " AND ".join(parts), args


@dataclasses.dataclass
class FileQuery:
    """One archive to read: its connection and the WHERE clause for it (None: nothing matches)."""

    path: Path
    conn: sqlite3.Connection
    where: tuple[str, list[Any]] | None


def plan_file(path: Path, ast: Any, deadline: float | None = None) -> FileQuery:
    """Open ``path`` and decide what to ask it, skipping it when its time span misses the range.

    :raises QueryError: the file cannot be read as an archive.
    """
    conn = connect(path, deadline)
    try:
        info = _archive.read_info(conn)
        bounds = TimeBounds.of(ast)
        first, last = info.get("first_stime"), info.get("last_ltime")
        if info.get("state") != "open" and info.get("records") == 0:
            return FileQuery(path, conn, None)
        if first is not None and last is not None and bounds.misses(first, last):
            return FileQuery(path, conn, None)
        if uses_alerts(ast):
            prepare_alert_links(conn, path, info)
        return FileQuery(path, conn, where_clause(ast, *stime_range(conn, path, bounds, info)))
    except sqlite3.Error as e:
        conn.close()
        raise _sql_error(e) from None


def record_sql(where: str, indexed: bool = True, columns: Sequence[str] = RECORD_ORDER) -> str:
    """The statement that reads ``columns`` of the records matching ``where`` in rowid order."""
    return f"SELECT {_select(columns)} FROM {source(indexed)} WHERE {where} ORDER BY rid"


def _select(columns: Sequence[str]) -> str:
    return _SELECT if columns is RECORD_ORDER else ", ".join(ident(k) for k in columns)


def explain(path: str | os.PathLike[str], ast: Any, indexed: bool = True) -> list[str]:
    """SQLite's query plan (EXPLAIN QUERY PLAN details) for reading ``path`` with ``ast``.

    :raises QueryError: the file cannot be read as an archive.
    """
    fq = plan_file(Path(path), ast)
    try:
        if fq.where is None:
            return ["(archive skipped: its time span misses the range)"]
        sql, params = fq.where
        return [row[3] for row in fq.conn.execute("EXPLAIN QUERY PLAN " + record_sql(sql, indexed),
                                                  params)]
    finally:
        fq.conn.close()


# --- reading records ----------------------------------------------------------------------------

def read_file(path: Path, ast: Any, deadline: float | None = None, indexed: bool = True,
              need: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Records of one archive file that match ``ast``, in rowid order; with ``need``, holding
    only those keys (what the caller reads: fewer columns to fetch and to build).

    A damaged page does not end the file: the records beyond it are read too (``scan``), and a
    ``QueryError`` after them names the records that could not be read.

    :raises QueryError: unreadable or foreign file, damaged records (after all the others), or
        ``QueryTimeout``.
    """
    fq = plan_file(path, ast, deadline)
    try:
        if fq.where is None:
            return
        keys = RECORD_ORDER if need is None else tuple(k for k in RECORD_ORDER if k in need) or ("seq",)
        where, params = fq.where
        for row in scan(fq.conn, fq.path, _select(keys), where, params, indexed):
            yield dict(zip(keys, row))
    finally:
        fq.conn.close()


def scan(conn: sqlite3.Connection, path: Path, select: str, where: str, params: Sequence[Any],
         indexed: bool = True, after: int = 0) -> Iterator[tuple]:
    """The rows of ``SELECT {select} FROM source(indexed) WHERE {where}`` with rowids above
    ``after``, in rowid order, read around damaged pages.

    SQLite ends a statement at the first damaged page, but each record stays reachable through
    the table's B-tree by its rowid unless its own page is the damaged one (rowids are dense:
    archives never delete rows). So after damage the read goes on from the last rowid read, on
    the table alone (the damage may be in an index), one rowid further each time that seek
    fails, up to the archive's last rowid. That scan reads every row and yields those the filter
    matches, so that what is reported lost is what could not be read. Flash cards do corrupt
    pages; one bad page must not hide the hour around it.

    :raises QueryError: after every readable row, naming the rowids that could not be read;
        ``QueryTimeout``; any other SQLite error at once.
    """
    cond, args = (where, list(params)) if not after else (f"rid > ? AND ({where})", [after, *params])
    sql = f"SELECT {select}, rid FROM {source(indexed)} WHERE {cond} ORDER BY rid"
    resume = f"SELECT {select}, rid, ({where}) FROM {source(False)} WHERE rid > ? ORDER BY rid"
    top, damage = None, ""
    gaps: list[tuple[int, int]] = []          # rowid ranges that could not be read
    gap_from: int | None = None
    # Batches until damage (a batch that fails is read again on resume), then row by row; the
    # resumed rows carry the filter's verdict last.
    batch, filtered = 1024, False
    while True:
        try:
            cur = conn.execute(sql, args)
            n = len(cur.description) - (2 if filtered else 1)       # the rowid's column
            while rows := cur.fetchmany(batch):
                if gap_from is not None:
                    gaps.append((gap_from, rows[0][n] - 1))
                    gap_from = None
                after = rows[-1][n]
                for row in rows:
                    if not filtered or row[n + 1]:
                        yield row[:n]
            break
        except sqlite3.Error as e:
            if not _archive.is_damage(e):
                raise _sql_error(e) from None
            if not damage:                    # first: on from the last record, without indexes
                damage, top = str(e), last_rowid(conn)
            else:
                gap_from = after + 1 if gap_from is None else gap_from
                after += 1
            if top is None:                   # where the records end is unreadable too
                raise QueryError(f"damaged: the records after rowid {after} could not be read "
                                 f"({damage}); those before it were read")
            if after >= top:
                break
            sql, args, batch, filtered = resume, [*params, after], 1, True
    if gap_from is not None:
        gaps.append((gap_from, max(top or 0, gap_from)))
    if gaps:
        lost = sum(b - a + 1 for a, b in gaps)
        spans = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in gaps[:5])
        more = ", ..." if len(gaps) > 5 else ""
        raise QueryError(f"damaged: {lost} records could not be read (rowids {spans}{more}; "
                         f"{damage}); the other records were read")
    if damage:
        log.warning("%s: damaged index (%s); every record was read from the table", path, damage)


def last_rowid(conn: sqlite3.Connection) -> int | None:
    """The highest rowid of ``flows`` (0: none), or the record count ``archive_info`` holds when the
    table's last page is the damaged one (None if neither can be read)."""
    for sql in ("SELECT max(rowid) FROM flows",
                "SELECT value FROM archive_info WHERE key = 'records'"):
        try:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row and row[0] is not None else 0
        except (sqlite3.Error, ValueError):
            continue
    return None


def read_records(path: str | os.PathLike[str], ast: Any = None, time_limit: float | None = None,
                 indexed: bool = True, need: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Records matching the filter AST in an archive file or directory (files in name order).

    A damaged or foreign file in a directory does not stop the others: their records come first,
    then one ``QueryError`` names every file that failed.

    :param ast: a ``filter.parse`` AST (the ``-t`` range ANDed in), or None for every record.
    :param time_limit: seconds the whole read may take (``QueryTimeout`` after that).
    :param indexed: False forces a full scan (``NOT INDEXED``; for benchmarks).
    :param need: the record keys to read (default: all; see ``read_file``).
    :raises QueryError: see above; also when PATH names no archive.
    """
    deadline = _deadline(time_limit)
    yield from _each_file(Path(path), lambda f: read_file(f, ast, deadline, indexed, need))


def _each_file(path: Path, read: Callable[[Path], Iterator[T]]) -> Iterator[T]:
    """What ``read`` yields for each archive file of ``path`` (a file, or a directory's in name
    order). A failing file does not stop the others: one ``QueryError`` naming each failed file
    comes last; a file named by ``path`` itself raises its own error; a timeout stops everything.
    """
    files = archive_files(path)
    failed = []
    for f in files:
        try:
            yield from read(f)
        except QueryTimeout:
            raise
        except QueryError as e:
            if len(files) == 1 and path == f:
                raise
            failed.append(f"{f.name}: {e}")
    if failed:
        raise QueryError("; ".join(failed))


# --- racluster in SQL ---------------------------------------------------------------------------

_SUMMED = _cluster.SUMS
# Rows whose packet sizes the SQL merge does not follow (sizes in a direction without packets,
# a non-positive minimum): any such row sends the query back to the Python clusterer.
_SIZE_ODD = ("(coalesce(spkts, 0) = 0 AND (coalesce(smaxsz, 0) != 0 OR coalesce(sminsz, 0) != 0))"
             " OR (coalesce(dpkts, 0) = 0 AND (coalesce(dmaxsz, 0) != 0 OR coalesce(dminsz, 0) != 0))"
             " OR (spkts AND coalesce(sminsz, 0) <= 0) OR (dpkts AND coalesce(dminsz, 0) <= 0)")
# TCP flag letters in Clusterer's order; others send the query back to Python.
_FLAG_ORDER = _cluster._FLAG_ORDER
# flgs letters that Argus merges pairwise ('s' and 'd' into '*', ...), and anything unprintable:
# with none of them, merging flgs keeps the last non-blank letter of each column.
_FLGS_ODD_GLOB = "'*[dirSDxt]*'"
_FLGS_ODD = re.compile(r"[dirSDxt]|[^ -~]")


_SIZES = frozenset(("smaxsz", "sminsz", "dmaxsz", "dminsz"))


def _aggregates(keys: Sequence[_cluster.KeyField],
                need: frozenset[str]) -> tuple[list[tuple[str, str]], list[Any]]:
    """(name, expression) of the per-group aggregates for the record keys in ``need``, and the key
    expressions' parameters. Each aggregate runs once per row: only what is printed is computed."""
    cols: list[tuple[str, str]] = []
    params: list[Any] = []
    for i, k in enumerate(keys):
        if k.prefix is None:
            cols.append((f"k{i}", ident(k.key)))
        else:
            cols.append((f"k{i}", f"ft_mask({ident(k.key)}, ?)"))
            params.append(k.prefix)
    cols += [("n", "count(*)"), ("r_first", "min(rid)"), ("r_last", "max(rid)")]
    cols += [(c.name, f"{c.merge}({ident(c.name)})") for c in _record.COLUMNS if c.merge in ("min", "max")]
    if "state" in need:
        cols += [("r_nonreq", "max(CASE WHEN state IS NOT 'REQ' THEN rid END)"),
                 ("r_int", "max(CASE WHEN state = 'INT' THEN rid END)")]
    if need & _SIZES:
        cols.append(("odd", f"max(CASE WHEN {_SIZE_ODD} THEN 1 ELSE 0 END)"))
    cols += [(f"{c}_all", f"group_concat({c}, '')") for c in ("sflags", "dflags") if c in need]
    if "flgs" in need:
        cols += [("flgs_lo", "min(flgs)"), ("flgs_hi", "max(flgs)"), ("flgs_n", "count(flgs)")]
    cols += [(f"sum_{c}", f"sum({ident(c)})") for c in _SUMMED if c in need]
    cols += [(f"p_{c}", f"max(CASE WHEN {ident(c)} IS NOT NULL THEN rid END)")
             for c in _cluster.LAST if c in need]
    cols += [(f"q_{c}", f"min(CASE WHEN {ident(c)} THEN rid END)") for c in _cluster.RTT if c in need]
    for side in "sd":
        if need & {f"{side}maxsz", f"{side}minsz"}:
            cols += [(f"max_{side}", f"max(CASE WHEN {side}pkts THEN {side}maxsz END)"),
                     (f"min_{side}", f"min(CASE WHEN {side}pkts THEN {side}minsz END)")]
    names = {k.key for k in keys}
    for c in _cluster.IDENTITY:
        if c not in names and c in need:
            cols += [(f"n_{c}", f"count({ident(c)})"), (f"lo_{c}", f"min({ident(c)})"),
                     (f"hi_{c}", f"max({ident(c)})")]
    return cols, params


def _letters(col: str) -> str:
    """SQL for Clusterer's union of TCP flag letters in a concatenation of flag strings."""
    return " || ".join(f"CASE WHEN instr({col}, '{c}') THEN '{c}' ELSE '' END" for c in _FLAG_ORDER)


def _merged_columns(keys: Sequence[_cluster.KeyField], need: frozenset[str]) -> list[tuple[str, str]]:
    """(column, SQL) over one group's aggregates (``g``) and its first (``f``) and last (``l``)
    rows, for each column of the merged record in ``need`` (and the keys), in RECORD_ORDER (the
    rules of cluster.Clusterer)."""
    key_of = {k.key: f"g.k{i}" for i, k in enumerate(keys)
              if k.prefix is not None or k.key in _cluster.IDENTITY}
    out = []
    for c in RECORD_ORDER:
        if c not in need and c not in key_of:
            continue
        out.append((c, key_of[c] if c in key_of else _merged_sql(c, _record.BY_NAME[c].merge)))
    return out


def _merged_sql(c: str, rule: str) -> str:
    """SQL for column ``c`` of a merged record under its merge ``rule`` (appliance/record.py)."""
    if rule == "identity":
        return f"CASE WHEN g.n_{c} = g.n AND g.lo_{c} = g.hi_{c} THEN g.lo_{c} END"
    if rule == "first":
        return f"f.{c}"
    if rule in ("min", "max"):
        return f"g.{c}"
    if rule == "dur":
        return "CASE WHEN g.n > 1 THEN g.ltime - g.stime ELSE f.dur END"
    if rule == "state":
        return ("CASE WHEN g.n > 1 AND l.state = 'REQ' AND g.r_nonreq = g.r_int "
                "THEN 'INT' ELSE l.state END")
    if rule == "lastany":
        return f"l.{c}"
    if rule == "sum":
        return f"CASE WHEN g.n > 1 THEN coalesce(g.sum_{c}, 0) ELSE g.sum_{c} END"
    if rule == "last":
        return (f"CASE WHEN g.p_{c} IS NULL THEN NULL WHEN g.p_{c} = g.r_last THEN l.{c} "
                f"ELSE (SELECT {c} FROM flows WHERE rowid = g.p_{c}) END")
    if rule == "rtt":
        return (f"CASE WHEN g.q_{c} IS NULL OR g.q_{c} = g.r_first THEN f.{c} "
                f"ELSE (SELECT {c} FROM flows WHERE rowid = g.q_{c}) END")
    if rule == "letters":
        return f"CASE WHEN g.n > 1 THEN {_letters(f'g.{c}_all')} ELSE f.{c} END"
    if rule == "flgs":
        return "CASE WHEN g.flgs_n > 0 THEN g.flgs_lo WHEN g.n > 1 THEN '' END"
    if rule == "maxsz":
        mx, fv = f"g.max_{c[0]}", f"f.{c}"
        return f"CASE WHEN {mx} IS NULL OR {mx} <= {fv} THEN {fv} ELSE {mx} END"
    if rule == "minsz":
        return f"coalesce(g.min_{c[0]}, f.{c})"
    raise AssertionError(f"no merge rule for {c}")   # pragma: no cover



def _group_sql(keys: Sequence[_cluster.KeyField], where: str,
               need: frozenset[str]) -> tuple[str, list[Any], list[str]]:
    """The per-file GROUP BY statement, its key parameters and the merged record's columns. Each
    row: the key values, then n, r_last, all_req, odd, flgs_varies, then those columns."""
    cols, params = _aggregates(keys, need)
    group = ", ".join(f"+k{i}" for i in range(len(keys)))
    inner = (f"SELECT {', '.join(f'{expr} AS {name}' for name, expr in cols)} "
             f"FROM {source()} WHERE {where}{f' GROUP BY {group}' if group else ''}")
    odd = ["g.odd"] if need & _SIZES else []
    odd += [f"g.{c}_all GLOB '*[^{_FLAG_ORDER}]*'" for c in ("sflags", "dflags") if c in need]
    if "flgs" in need:
        odd += [f"g.flgs_lo GLOB {_FLGS_ODD_GLOB}", f"g.flgs_hi GLOB {_FLGS_ODD_GLOB}",
                "g.flgs_lo GLOB '*[^ -~]*'", "g.flgs_hi GLOB '*[^ -~]*'"]
    meta = [f"g.k{i}" for i in range(len(keys))]
    meta += ["g.n", "g.r_last", "g.r_nonreq IS NULL" if "state" in need else "0",
             " OR ".join(odd) or "0", "g.flgs_lo IS NOT g.flgs_hi" if "flgs" in need else "0"]
    merged = _merged_columns(keys, need)
    sql = (f"WITH g AS ({inner}) SELECT {', '.join(meta + [expr for _, expr in merged])} FROM g "
           f"CROSS JOIN flows AS f ON f.rowid = g.r_first "
           f"CROSS JOIN flows AS l ON l.rowid = g.r_last WHERE g.n > 0")
    return sql, params, [name for name, _ in merged]


def _flgs_sql(keys: Sequence[_cluster.KeyField], where: str) -> str:
    """Each group's distinct flgs values with their last row (for groups where they vary)."""
    cols, _ = _aggregates(keys, frozenset())
    kexpr = [f"{expr} AS {name}" for name, expr in cols[:len(keys)]]
    group = ", ".join([f"+k{i}" for i in range(len(keys))] + ["+flgs"])
    return (f"SELECT {', '.join(kexpr + ['flgs', 'max(rid)'])} FROM {source()} "
            f"WHERE {where} AND flgs IS NOT NULL GROUP BY {group}")


class _Odd(Exception):
    """A group whose merge SQL does not reproduce exactly."""


def _merged_flgs(values: list[tuple[int, str]]) -> str:
    """Column by column, the letter of the last row that had one there ((last rowid, flgs)
    of each distinct value)."""
    if len({len(v) for _, v in values}) > 1:
        raise _Odd("flgs of different widths")
    out = [" "] * len(values[0][1])
    for _, v in sorted(values):
        if _FLGS_ODD.search(v):
            raise _Odd("flgs letters merged pairwise")
        for i, ch in enumerate(v):
            if ch != " ":
                out[i] = ch
    return "".join(out)


def cluster_file(path: Path, keys: Sequence[_cluster.KeyField], ast: Any,
                 deadline: float | None = None,
                 need: frozenset[str] = frozenset(RECORD_ORDER)) -> list[tuple[tuple, dict[str, Any], bool]]:
    """(group key, partial merged record, whether every row's state is REQ) for each key in one
    archive file, ordered by each group's last row (the order in which Clusterer would last have
    updated them).

    :raises QueryError: as ``read_file``.
    :raises _Odd: a group the SQL merge cannot reproduce exactly, or a damaged page.
    """
    fq = plan_file(path, ast, deadline)
    try:
        if fq.where is None:
            return []
        where, wparams = fq.where
        sql, kparams, names = _group_sql(keys, where, need)
        nk = len(keys)
        out, varied = [], {}
        try:
            cur = fq.conn.execute(sql, kparams + wparams)
            while rows := cur.fetchmany(1024):
                for row in rows:
                    n, r_last, all_req, odd, vary = row[nk:nk + 5]
                    if odd:
                        raise _Odd("values the SQL merge does not follow")
                    rec = dict(zip(names, row[nk + 5:]))     # only the columns asked for
                    rec["trans"] = n
                    if vary:
                        varied[row[:nk]] = rec
                    out.append((r_last, row[:nk], rec, bool(all_req)))
            if varied:
                values: dict[tuple, list[tuple[int, str]]] = {}
                for row in fq.conn.execute(_flgs_sql(keys, where), kparams + wparams):
                    if row[:nk] in varied:
                        values.setdefault(row[:nk], []).append((row[nk + 1], row[nk]))
                for key, rec in varied.items():
                    rec["flgs"] = _merged_flgs(values[key])
        except sqlite3.Error as e:
            if _archive.is_damage(e):        # read_file reads around the damage, record by record
                raise _Odd(f"damaged archive: {e}") from None
            raise _sql_error(e) from None
        out.sort(key=lambda t: t[0])
        return [t[1:] for t in out]
    finally:
        fq.conn.close()


class _Merger(_cluster.Clusterer):
    """A Clusterer fed with partial merged records under their SQL group keys (the raw key
    values: a merged record's own values may differ from them, e.g. ``-m pkts``)."""

    def add_group(self, key: tuple, rec: dict[str, Any], all_req: bool) -> None:
        """Merge one file's partial record of group ``key`` (as ``add`` merges a record).

        :param all_req: every row of the partial had state REQ (else its state stands, as the
            rows would have replaced an earlier INT one by one).
        """
        flgs = rec.get("flgs")
        agg = self._table.pop(key, None)
        if agg is None:
            agg = rec                       # a fresh partial: its keys are masked already
            agg["_vary"] = set()
        else:
            if flgs and agg.get("flgs") and len(flgs) != len(agg["flgs"]):
                raise _Odd("flgs of different widths")
            self._merge(agg, rec)
            if not all_req:
                agg["state"] = rec.get("state")
        self._table[key] = agg


def merge_columns(keys: Sequence[_cluster.KeyField], need: Iterable[str]) -> frozenset[str]:
    """The record keys a merge by ``keys`` reads to print ``need``: those, the keys, stime and
    ltime (the order and dur), and a side's packets with its packet sizes (kept only where that
    side sent packets)."""
    needed = frozenset(need) | {k.key for k in keys} | {"stime", "ltime"}
    return needed | {side + "pkts" for side in "sd" if needed & {side + "maxsz", side + "minsz"}}


def cluster_archives(paths: Iterable[str | os.PathLike[str]], keys: Sequence[_cluster.KeyField],
                     ast: Any = None, norep: bool = False, time_limit: float | None = None,
                     errors: list[str] | None = None,
                     need: Iterable[str] | None = None) -> Iterator[dict[str, Any]] | None:
    """racluster ``-m keys`` over archive files and directories, merged in SQL.

    Returns the merged records in racluster's order (an iterator), exactly as ``cluster.Clusterer(keys,
    norep=norep, correct=False)`` makes them from ``read_records`` of every path; or None when
    some group holds values whose merge only the Python clusterer reproduces (nothing is added
    to ``errors`` then: the caller reads the inputs again).

    :param errors: receives ``"PATH: reason"`` for each input that could not be read (the others
        are still merged); without it, the first failure raises.
    :param need: the record keys the caller reads (``fields.keys_read``): only those are merged,
        the others are None. Default: all.
    :raises QueryError: an unreadable input when ``errors`` is None, or ``QueryTimeout``.
    """
    deadline = _deadline(time_limit)
    merger = _Merger(keys, norep=norep, correct=False)
    # Results are sorted by their key fields' merged values; partial records of several files are
    # merged by stime and ltime, and a side's packet sizes only where that side has packets.
    needed = frozenset(RECORD_ORDER) if need is None else merge_columns(keys, need)
    failed: list[str] = []
    try:
        for path in paths:
            try:
                for key, rec, all_req in _cluster_path(Path(path), keys, ast, deadline, needed):
                    merger.add_group(key, rec, all_req)
            except QueryTimeout:
                raise
            except QueryError as e:
                failed.append(f"{path}: {e}")
    except _Odd:
        return None
    if failed:
        if errors is None:
            raise QueryError(failed[0])
        errors.extend(failed)
    return merger.results()


def _cluster_path(path: Path, keys: Sequence[_cluster.KeyField], ast: Any, deadline: float | None,
                  need: frozenset[str]) -> Iterator[tuple[tuple, dict[str, Any], bool]]:
    return _each_file(path, lambda f: iter(cluster_file(f, keys, ast, deadline, need)))
