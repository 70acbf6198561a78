"""Search: a time range and the filter language over every archive → a paged, sortable table → CSV
or JSON lines. query.py plans each archive (time-span pruning, indexed stime range); statements are
read-only, parameterised and interrupted after QUERY_TIME_LIMIT."""
from __future__ import annotations

import heapq
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request

from .. import alerts as _alerts
from .. import archive as _archive
from .. import fields as _fields
from .. import filter as _filter
from .. import query
from . import archives as _archives

bp = Blueprint("search", __name__)

SHOWN = ("stime", "dur", "proto", "saddr", "sport", "dir", "daddr", "dport", "pkts", "bytes", "state")
SORTABLE = ("stime", "ltime", "dur", "proto", "saddr", "sport", "daddr", "dport", "pkts", "bytes", "state")
MAX_FILTER = 2000          # characters
MAX_ROWS = 100_000         # deepest row a page may reach
DEFAULT_RANGE = "-1h"


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
    query.py picks the WHERE clause (filter plus an indexed stime range). The caller closes conn."""
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


def _key(value: Any) -> tuple:
    return (value is not None, value if value is not None else 0)


NAMES = (*_archive.FLOW_NAMES, "pkts", "bytes")     # a result row's keys


def page(ast: Any, sort: str, desc: bool, offset: int, limit: int,
         damaged: list[str] | None = None) -> tuple[list[dict], bool]:
    """Rows offset..offset+limit of the whole result in sort order, and whether more follow.

    :param damaged: receives "ARCHIVE: what could not be read" for each damaged archive (its
        readable records are still in the result).
    :raises query.QueryTimeout: past QUERY_TIME_LIMIT.
    """
    order = "DESC" if desc else "ASC"
    deadline = time.monotonic() + current_app.config["QUERY_TIME_LIMIT"]
    want = offset + limit + 1
    streams = []
    for path, fq in plans(ast, deadline):
        where, params = fq.where
        try:
            cur = fq.conn.execute(
                f"SELECT {', '.join(NAMES)} FROM {_archives.SOURCE}"
                f" WHERE {where} ORDER BY {sort} {order}, rid {order} LIMIT ?", [*params, want])
            streams.append([dict(zip(NAMES, row)) for row in cur])
        except sqlite3.DatabaseError as e:
            if "interrupt" in str(e):
                raise query.QueryTimeout("query time limit reached") from None
            if not _archive.is_damage(e):
                raise
            streams.append(_around_damage(path, fq, sort, desc, want, damaged))
        finally:
            fq.conn.close()
    merged = heapq.merge(*streams, key=lambda r: _key(r[sort]), reverse=desc)
    rows = [r for _, r in zip(range(offset + limit + 1), merged)][offset:]
    return rows[:limit], len(rows) > limit


def _around_damage(path: Path, fq: Any, sort: str, desc: bool, want: int,
                   damaged: list[str] | None) -> list[dict]:
    """The first ``want`` rows of a damaged archive in the page's order, read around the damage
    (``query.scan``: the table row by row from where it broke); what was lost goes to ``damaged``."""
    where, params = fq.where
    rows = query.scan(fq.conn, path, f"{', '.join(NAMES)}, rid", where, params, indexed=False)
    pick = heapq.nlargest if desc else heapq.nsmallest

    def readable() -> Iterator[tuple]:
        try:
            yield from rows
        except query.QueryTimeout:
            raise
        except query.QueryError as e:
            if damaged is not None:
                damaged.append(f"{path.name}: {e}")
    at = NAMES.index(sort)
    ordered = pick(want, readable(), key=lambda r: (_key(r[at]), r[-1]))
    return [dict(zip(NAMES, row)) for row in ordered]


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        abort(400, f"{name}: must be a whole number from {low} to {high}.")
    return int(raw)


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


@bp.route("/search")
def index():
    """The search form and, once submitted, one page of results."""
    args = request.args
    searched = "t" in args or "filter" in args
    sort = args.get("sort", "stime")
    if sort not in SORTABLE:
        abort(400, f"sort: must be one of {', '.join(SORTABLE)}.")
    if args.get("order", "desc") not in ("asc", "desc"):
        abort(400, "order: must be asc or desc.")
    desc = args.get("order", "desc") == "desc"
    size = current_app.config["PAGE_SIZE"]
    pageno = _int_arg("page", 1, 1, MAX_ROWS // size)
    ctx: dict[str, Any] = {"t": args.get("t", DEFAULT_RANGE), "filter": args.get("filter", ""),
                           "sort": sort, "order": "desc" if desc else "asc", "page": pageno,
                           "rows": [], "more": False, "error": None, "searched": searched,
                           "shown": SHOWN, "sortable": SORTABLE, "damaged": [], "found": None,
                           "linked_error": None}
    status = 200
    if searched:
        try:
            ctx["rows"], ctx["more"] = page(selection(args), sort, desc, (pageno - 1) * size, size,
                                            ctx["damaged"])
            ctx["found"], ctx["linked_error"] = linked_alerts(ctx["rows"])
        except SearchError as e:
            ctx["error"], status = e, 400
        except query.QueryTimeout:
            limit = current_app.config["QUERY_TIME_LIMIT"]
            ctx["error"] = SearchError("", f"the search took longer than {limit:g} s: "
                                           "narrow the time range or the filter")
            status = 503
    return render_template("search.html", **ctx), status


@bp.route("/search/download/<fmt>")
def download(fmt: str):
    """The whole result, oldest first, as CSV or JSON lines (streamed)."""
    if fmt not in ("csv", "jsonl"):
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
    """Every record matching ``ast``, oldest first, as a streamed CSV or JSON-lines attachment
    (Argus field names; what the search page and the alerts' around view download)."""
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
    body = _archives.csv_chunks(rows()) if fmt == "csv" else _archives.jsonl_chunks(rows())
    return _archives.download_response(body, filename,
                                       "text/csv" if fmt == "csv" else "application/x-ndjson")
