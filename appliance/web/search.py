"""Search: a time range and the filter language over every archive → a paged, sortable table → CSV
or JSON lines. query.py plans each archive (time-span pruning, indexed stime range); statements are
read-only, parameterised and interrupted after QUERY_TIME_LIMIT."""
from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import itertools
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, url_for

from .. import alerts as _alerts
from .. import archive as _archive
from .. import fields as _fields
from .. import filter as _filter
from .. import query
from . import archives as _archives
from . import limits

bp = Blueprint("search", __name__)

SHOWN = ("stime", "dur", "proto", "saddr", "sport", "dir", "daddr", "dport", "pkts", "bytes", "state")
SORTABLE = ("stime", "ltime", "dur", "proto", "saddr", "sport", "daddr", "dport", "pkts", "bytes", "state")
MAX_FILTER = 2000          # characters
MAX_ROWS = 100_000         # deepest row a page may reach
MAX_FIELDS_ARG = 1000      # characters of the fields= argument
DEFAULT_RANGE = "-1h"
COUNT_TIME_LIMIT = 2.0     # seconds the result count may take (then: "at least N")
STALE = 3600.0             # newest record older than this: the default range is the data's last hour
FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson",
           "csv.gz": "application/gzip", "jsonl.gz": "application/gzip"}


class SearchError(Exception):
    """Bad search input: which form field, what is wrong, and (for a filter) the 1-based column."""

    def __init__(self, field: str, message: str, position: int | None = None):
        super().__init__(message)
        self.field, self.message, self.position = field, message, position


def selection(args: Any) -> Any:
    """The filter AST for the form's time range and filter (None: everything).

    :raises SearchError: naming the field, with the column of a filter error.
    """
    text, span = args.get("filter", ""), args.get("t", "").strip()
    if len(text) > MAX_FILTER or len(span) > 200:
        raise SearchError("filter" if len(text) > MAX_FILTER else "t", "too long")
    try:
        ast = _filter.parse(text) if text.strip() else None
    except _filter.FilterError as e:
        raise SearchError("filter", e.message, e.position) from None
    if span:
        rng = time_range(span)
        ast = rng if ast is None else _filter.And(rng, ast)
    return ast


def time_range(span: str, now: float | None = None) -> Any:
    """``filter.parse_time_range`` for a form field.

    :raises SearchError: field ``t``, with the column of the bad part (or 1: a time out of range).
    """
    try:
        return _filter.parse_time_range(span, now)
    except _filter.FilterError as e:
        raise SearchError("t", e.message, e.position) from None


def plans(ast: Any, deadline: float) -> Iterator[tuple[Path, Any]]:
    """(archive, query.FileQuery) for every archive whose time span may hold matches, oldest first;
    query.py picks the WHERE clause (filter plus an indexed stime range). The caller closes conn
    before taking the next (one archive open at a time)."""
    for path in _archives.archive_paths().values():
        try:
            fq = query.plan_file(path, ast, deadline)
        except query.QueryTimeout:
            raise
        except query.QueryError:
            continue                    # unreadable or just deleted: the archives page says which
        if fq.where is None:
            fq.conn.close()
            continue
        yield path, fq


NAMES = (*_archive.FLOW_NAMES, "pkts", "bytes")     # a result row's keys; the fields a table may show
NUMERIC = frozenset(name for name, kind in _archive.FLOW_COLUMNS if kind in ("INTEGER", "REAL")
                    and name not in ("stime", "ltime", "proto")) | {"pkts", "bytes"}


@dataclasses.dataclass
class Result:
    """One page of a search: its rows, whether more follow, and how many match in all."""

    rows: list[dict[str, Any]]
    more: bool
    total: int | None = None        # every match, counted; None: the count ran out of time
    at_least: int = 0               # a lower bound on the matches when total is None


def page(ast: Any, sort: str, desc: bool, offset: int, limit: int,
         damaged: list[str] | None = None) -> tuple[list[dict], bool]:
    """Rows offset..offset+limit of the whole result in sort order, and whether more follow.

    :param damaged: receives "ARCHIVE: what could not be read" for each damaged archive (its
        readable records are still in the result).
    :raises query.QueryTimeout: past QUERY_TIME_LIMIT.
    """
    result = search(ast, sort, desc, offset, limit, damaged)
    return result.rows, result.more


def search(ast: Any, sort: str, desc: bool, offset: int, limit: int,
           damaged: list[str] | None = None, count: bool = False) -> Result:
    """``page``'s rows, and with ``count`` the number of matches (COUNT(*) per archive within
    COUNT_TIME_LIMIT on top of the page's time).

    Memory stays bounded whatever the depth and the number of archives: the archives are read one
    after the other, each for just its sort key and rowid, into one list of the first
    offset+limit+1 keys of the whole result (flat tuples, about 130 bytes each); only the page's
    rows are then read whole, by rowid.

    :raises query.QueryTimeout: past QUERY_TIME_LIMIT.
    """
    deadline = time.monotonic() + current_app.config["QUERY_TIME_LIMIT"]
    counting = time.monotonic() + COUNT_TIME_LIMIT
    want = offset + limit + 1
    best: list[tuple] = []          # (not null, value, archive index, rid), in result order
    paths: list[Path] = []
    counted, exact = 0, count
    for path, fq in plans(ast, deadline):
        try:
            keys = _sort_keys(path, fq, sort, desc, want, len(paths), damaged)
            best = list(itertools.islice(heapq.merge(best, keys, reverse=desc), want))
            if exact:
                n = _count(fq, min(counting, deadline))
                exact, counted = n is not None, counted + (n or 0)
        finally:
            paths.append(path)
            fq.conn.close()
    chosen = best[offset:offset + limit]
    more = len(best) > offset + limit
    del best
    rows = _fetch(paths, chosen, deadline)
    shown = offset + len(rows) + more
    return Result(rows, more, counted if exact else None, max(counted, shown))


def _sort_keys(path: Path, fq: Any, sort: str, desc: bool, want: int, index: int,
               damaged: list[str] | None) -> Iterator[tuple]:
    """An archive's first ``want`` (not null, value, index, rowid) keys in the page's order, read
    lazily from its cursor (around the damage for a damaged archive)."""
    where, params = fq.where
    order = "DESC" if desc else "ASC"
    sql = (f"SELECT {sort}, rid FROM {_archives.SOURCE} WHERE {where}"
           f" ORDER BY {sort} {order}, rid {order} LIMIT ?")
    given = 0
    try:
        for value, rid in fq.conn.execute(sql, [*params, want]):
            yield (value is not None, value if value is not None else 0, index, rid)
            given += 1
    except sqlite3.DatabaseError as e:
        if "interrupt" in str(e):
            raise query.QueryTimeout("query time limit reached") from None
        if not _archive.is_damage(e):
            raise
        # the same order, read around the damage: what came before it has been given already
        ordered = _around_damage(path, fq, sort, desc, want, damaged)
        yield from ((v is not None, v if v is not None else 0, index, rid)
                    for v, rid in itertools.islice(ordered, given, None))


def _count(fq: Any, deadline: float) -> int | None:
    """The archive's matches (None: not within ``deadline``, or unreadable). It replaces the
    connection's time limit: the last statement before the connection closes."""
    where, params = fq.where
    fq.conn.set_progress_handler(lambda: time.monotonic() > deadline, query.PROGRESS_STEPS)
    try:
        return fq.conn.execute(f"SELECT count(*) FROM {_archives.SOURCE} WHERE {where}",
                               params).fetchone()[0]
    except sqlite3.DatabaseError:
        return None


def _fetch(paths: list[Path], chosen: list[tuple], deadline: float) -> list[dict[str, Any]]:
    """The page's rows, whole, in the order of ``chosen`` (keys from ``search``); a row whose
    archive went meanwhile (retention) or cannot be read again is left out."""
    wanted: dict[int, list[int]] = {}
    for _null, _value, index, rid in chosen:
        wanted.setdefault(index, []).append(rid)
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for index, rids in wanted.items():
        path = paths[index]
        for row in _rows_by_rid(path, rids, deadline):
            found[index, row[-1]] = {**dict(zip(NAMES, row)), "file": path.name, "rid": row[-1]}
    return [found[index, rid] for _n, _v, index, rid in chosen if (index, rid) in found]


def _rows_by_rid(path: Path, rids: list[int], deadline: float) -> list[tuple]:
    """Rows (NAMES, then rid) of one archive by rowid; one by one around damage."""
    sql = f"SELECT {', '.join(NAMES)}, rid FROM {_archives.SOURCE} WHERE rid IN (%s)"
    try:
        conn = _archives.connect(path, max(deadline - time.monotonic(), 0.1))
    except (sqlite3.Error, _archive.ArchiveError, OSError):
        return []
    try:
        return conn.execute(sql % ", ".join("?" * len(rids)), rids).fetchall()
    except sqlite3.DatabaseError as e:
        if "interrupt" in str(e):
            raise query.QueryTimeout("query time limit reached") from None
        return [row for rid in rids for row in _one_row(conn, sql % "?", rid)]
    finally:
        conn.close()


def _one_row(conn: sqlite3.Connection, sql: str, rid: int) -> list[tuple]:
    try:
        return conn.execute(sql, (rid,)).fetchall()
    except sqlite3.DatabaseError:
        return []


def _around_damage(path: Path, fq: Any, sort: str, desc: bool, want: int,
                   damaged: list[str] | None) -> list[tuple]:
    """The first ``want`` (value, rid) of a damaged archive in the page's order, read around the
    damage (``query.scan``: the table row by row from where it broke); what was lost goes to
    ``damaged``."""
    where, params = fq.where
    rows = query.scan(fq.conn, path, f"{sort}, rid", where, params, indexed=False)
    pick = heapq.nlargest if desc else heapq.nsmallest

    def readable() -> Iterator[tuple]:
        try:
            yield from rows
        except query.QueryTimeout:
            raise
        except query.QueryError as e:
            if damaged is not None:
                damaged.append(f"{path.name}: {e}")
    return pick(want, readable(), key=lambda r: (r[0] is not None, r[0] if r[0] is not None else 0, r[1]))


def _page_arg(size: int) -> int:
    """The page= argument (``limits.whole_number``); past the deepest page, a 400 that says how to
    see further."""
    raw, high = request.args.get("page", ""), MAX_ROWS // size
    if not raw:
        return 1
    if limits.whole_number(raw, 1, 10 ** 18) is None:
        abort(400, f"page: must be a whole number from 1 to {high}.")
    value = limits.whole_number(raw, 1, high)
    if value is None:
        abort(400, f"page: deep pages need a narrower search: a page may start at most "
                   f"{MAX_ROWS:,} rows into the result (page {high}). Narrow the time range or the "
                   "filter, or download the whole result.")
    return value


def _closing(items: Iterator[tuple[Path, Any]]) -> Iterator[tuple[Path, Any]]:
    for path, fq in items:
        fq.conn.close()
        yield path, fq


def linked_alerts(rows: list[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]] | None, str | None]:
    """The alerts linked to each of a page's session rows, or (None, why not)."""
    if not rows:
        return [], None
    try:
        return _alerts.alerts_for_records(current_app.config["ARCHIVE_DIR"], rows), None
    except query.QueryTimeout:
        return None, "the alerts of these sessions could not be linked in time"
    except _alerts.AlertStoreError as e:
        return None, f"the alerts of these sessions could not be read ({e})"


@bp.app_template_filter("proto")
def _proto_filter(rec: dict) -> str:
    return _fields.proto_name(rec.get("proto"), rec.get("saddr"))


@bp.app_template_filter("field")
def field_text(rec: dict[str, Any], name: str) -> str:
    """One field of a record as the tables show it (times in the sensor's zone, as ``clock``)."""
    value = rec.get(name)
    if value is None:
        return ""
    if name in ("stime", "ltime"):
        return clock(value)
    if name == "proto":
        return _proto_filter(rec)
    if name == "dur":
        return f"{value:.3f}"
    if isinstance(value, int) and name in NUMERIC and name not in ("sport", "dport"):
        return f"{value:,}"
    return str(value)


@bp.app_template_test("numeric_field")
def _numeric_field(name: str) -> bool:
    return name in NUMERIC


def clock(t: float) -> str:
    """A time as the tables show it, in the sensor's local zone (``zone()`` names it)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


def zone(t: float | None = None) -> str:
    """The name of the sensor's time zone (the box runs UTC), which the page's times are in."""
    return time.strftime("%Z", time.localtime(t))


def ra_time(t: float) -> str:
    """A time in ra's -t syntax, local (2024/01/31.10:00:00)."""
    return time.strftime("%Y/%m/%d.%H:%M:%S", time.localtime(t))


def data_span() -> tuple[float, float] | None:
    """The oldest record's start and the newest record's time over every archive (None: no
    records); from the archives' summaries (``archives.describe``: cached for closed files)."""
    described = [_archives.describe(p) for p in _archives.archive_paths().values()]
    firsts = [d["first"] for d in described if d.get("first") is not None]
    lasts = [d["last"] for d in described if d.get("last") is not None]
    return (min(firsts), max(lasts)) if firsts and lasts else None


def default_range(span: tuple[float, float] | None, now: float) -> tuple[str, str | None]:
    """The form's time range before a search, and why when it is not the clock's last hour: when
    the newest record is older than an hour, the hour of the data that ends with it."""
    if span is None or span[1] >= now - STALE:
        return DEFAULT_RANGE, None
    end = math.floor(span[1]) + 1
    return (f"{ra_time(end - STALE)}-{ra_time(end)}",
            f"The newest record is from {clock(span[1])} {zone(span[1])}, more than an hour ago: "
            "the time range is the last hour of the data.")


def outside_hint(span: tuple[float, float] | None, t: str) -> str | None:
    """Why a time range finds nothing when it lies wholly outside the archives' span."""
    if span is None or not t.strip():
        return None
    try:
        bounds = query.TimeBounds.of(time_range(t))
    except SearchError:
        return None
    lo, hi = max(bounds.stime_lo, bounds.ltime_lo), min(bounds.stime_hi, bounds.ltime_hi)
    if lo > span[1] or hi < span[0]:
        return (f"The time range lies outside the archives, which hold {clock(span[0])} to "
                f"{clock(span[1])} {zone(span[1])}.")
    return None


def chosen_fields(args: Any) -> tuple[str, ...]:
    """The table's columns from ``fields=`` (a comma list, or the form's repeated checkboxes);
    only record fields (NAMES), each once; none given: SHOWN."""
    raw = args.getlist("fields")
    if sum(len(x) for x in raw) > MAX_FIELDS_ARG:
        abort(400, "fields: too long.")
    names = [n.strip() for part in raw for n in part.split(",") if n.strip()]
    for name in names:
        if name not in NAMES:
            shown = name if name.isprintable() and len(name) <= 30 else "that"
            abort(400, f"fields: {shown!r} is not a record field (the fields are "
                       f"{', '.join(NAMES)}).")
    return tuple(dict.fromkeys(names)) or SHOWN


def filter_term(rec: dict[str, Any], name: str) -> str | None:
    """What clicking a record's address, port or protocol adds to the filter (None: not that kind
    of value, or not one the filter language can name: a value from the wire is checked)."""
    value = rec.get(name)
    if name in ("saddr", "daddr") and isinstance(value, str):
        try:
            return f"host {ipaddress.ip_address(value)}"
        except ValueError:
            return None
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if name == "proto" and 0 <= value <= 255 and filter_term(rec, "saddr"):
        return f"proto {value}"
    if name in ("sport", "dport") and rec.get("proto") in _filter.PORT_PROTOS and 0 <= value <= 65535:
        return f"port {value}"
    return None


@dataclasses.dataclass(frozen=True)
class View:
    """What a search link keeps: time range, filter, order and columns."""

    t: str
    filter: str
    sort: str = "stime"
    order: str = "desc"
    fields: tuple[str, ...] = SHOWN

    def args(self, **over: Any) -> dict[str, Any]:
        """Query arguments for url_for (fields only when not the default)."""
        out: dict[str, Any] = {"t": self.t, "filter": self.filter, "sort": self.sort,
                               "order": self.order}
        if self.fields != SHOWN:
            out["fields"] = ",".join(self.fields)
        out.update(over)
        return out

    def url(self, **over: Any) -> str:
        return url_for("search.index", **self.args(**over))

    def refine(self, rec: dict[str, Any], name: str) -> str | None:
        """The search link that adds a record value's ``filter_term`` to the filter (None: no term,
        or the filter would grow past MAX_FILTER)."""
        term = filter_term(rec, name)
        if term is None:
            return None
        old = self.filter.strip()
        new = f"({old}) and {term}" if old else term
        return self.url(filter=new) if len(new) <= MAX_FILTER else None

    def detail(self, rec: dict[str, Any]) -> str:
        """The record's detail page (keeping the search for its links)."""
        return url_for("search.record", name=rec["file"], rid=rec["rid"], **self.args())


def view_of(args: Any) -> View:
    """The search a request names (400 for a bad sort, order or fields)."""
    sort = args.get("sort", "stime")
    if sort not in SORTABLE:
        abort(400, f"sort: must be one of {', '.join(SORTABLE)}.")
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        abort(400, "order: must be asc or desc.")
    return View(args.get("t", DEFAULT_RANGE), args.get("filter", ""), sort, order, chosen_fields(args))


@bp.route("/search")
def index():
    """The search form and, once submitted, one page of results with their count."""
    args = request.args
    searched = "t" in args or "filter" in args
    view = view_of(args)
    size = current_app.config["PAGE_SIZE"]
    pageno = _page_arg(size)
    span = data_span()
    now = time.time()
    default_note = None
    if "t" not in args:     # the form before a search; a search without t is over all time
        t, default_note = default_range(span, now) if not searched else ("", None)
        view = dataclasses.replace(view, t=t)
    ctx: dict[str, Any] = {"t": view.t, "filter": view.filter, "sort": view.sort,
                           "order": view.order, "page": pageno, "size": size, "view": view,
                           "rows": [], "more": False, "error": None, "searched": searched,
                           "shown": view.fields, "sortable": SORTABLE, "names": NAMES,
                           "damaged": [], "found": None, "linked_error": None, "result": None,
                           "span": span, "zone": zone(), "default_note": default_note,
                           "outside": outside_hint(span, view.t), "last_page": None,
                           "deepest": MAX_ROWS // size, "now": now,
                           "zone_offset": time.localtime(now).tm_gmtoff, "default_fields": SHOWN}
    status = 200
    if searched:
        try:
            result = search(selection(args), view.sort, view.order == "desc", (pageno - 1) * size,
                            size, ctx["damaged"], count=True)
            ctx.update(result=result, rows=result.rows, more=result.more)
            if result.total is not None:
                ctx["last_page"] = max(1, min(math.ceil(result.total / size), ctx["deepest"]))
            ctx["found"], ctx["linked_error"] = linked_alerts(ctx["rows"])
        except SearchError as e:
            ctx["error"], status = e, 400
        except query.QueryTimeout:
            limit = current_app.config["QUERY_TIME_LIMIT"]
            ctx["error"] = SearchError("", f"the search took longer than {limit:g} s: "
                                           "narrow the time range or the filter")
            status = 503
    return render_template("search.html", **ctx), status


@bp.route("/search/record/<name>/<rid>")
def record(name: str, rid: str):
    """Every field of one record (archive name and rowid), with click-to-filter links that keep
    the search it was reached from."""
    path = _archives.find(name)
    if not (rid.isascii() and rid.isdigit()) or len(rid) > 18 or int(rid) < 1:
        abort(404, "No such record.")
    view = view_of(request.args)
    try:
        conn = _archives.request_conn(path)
        row = conn.execute(f"SELECT {', '.join(NAMES)} FROM {_archives.SOURCE} WHERE rid = ?",
                           (int(rid),)).fetchone()
    except (sqlite3.Error, _archive.ArchiveError) as e:
        abort(404, f"Unreadable record: {e}")
    if row is None:
        abort(404, "No such record.")
    rec = {**dict(zip(NAMES, row)), "file": name, "rid": int(rid)}
    return render_template("record.html", rec=rec, names=NAMES, view=view, zone=zone(rec["stime"]))


@bp.route("/search/download/<fmt>")
@limits.download_slot
def download(fmt: str):
    """The whole result, oldest first, as CSV or JSON lines, plain or gzip (streamed; every field
    whatever the table shows)."""
    if fmt not in FORMATS:
        abort(404, "Unknown format.")
    try:
        ast = selection(request.args)
    except SearchError as e:
        abort(400, f"{e.field}: {e.message}" + (f" (column {e.position})" if e.position else ""))
    return download_result(ast, fmt, f"flowtap-search.{fmt}")


def alert_links(ast: Any, path: Path) -> Callable[[sqlite3.Connection], None] | None:
    """For a filter that names alerts (``alert``, ``sid N``): what fills an archive connection's
    ``temp.ft_linked`` as ``query.plan_file`` does for the page (a download reads each archive on
    a connection of its own); None for any other filter."""
    if not query.uses_alerts(ast):
        return None

    return lambda conn: query.prepare_alert_links(conn, path)


def download_result(ast: Any, fmt: str, filename: str):
    """Every record matching ``ast``, oldest first, as a streamed CSV or JSON-lines attachment,
    gzip-compressed for a ``.gz`` format (Argus field names; what the search page and the alerts'
    around view download)."""
    seconds = current_app.config["DOWNLOAD_TIME_LIMIT"]
    try:
        todo = [(path, fq.where) for path, fq in _closing(plans(ast, time.monotonic() + seconds))]
    except query.QueryTimeout:
        abort(503, "Planning the download took too long: narrow the time range or the filter.")

    def rows() -> Iterator[tuple]:
        for path, (where, params) in todo:
            try:
                yield from _archives.keyset_rows(path, seconds, where, params, by_time=True,
                                                 prepare=alert_links(ast, path))
            except (_archive.ArchiveError, FileNotFoundError):
                continue      # deleted by retention meanwhile
    body = _archives.csv_chunks(rows()) if fmt.startswith("csv") else _archives.jsonl_chunks(rows())
    if fmt.endswith(".gz"):
        body = _archives.gzip_chunks(body)
    return _archives.download_response(body, filename, FORMATS[fmt])
