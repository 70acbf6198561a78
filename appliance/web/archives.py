"""The archive list and downloads (SQLite, CSV.gz, JSON-lines.gz), streamed with constant memory.

Also the read helpers the other pages share: archives by name (the only way a file is chosen, so no
path from a request ever reaches the filesystem), read-only connections under a time limit, and
record streams read in short keyset-paged queries (no long read transaction holds the writer's WAL).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
import stat
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from flask import Blueprint, Response, abort, current_app, g, render_template

from .. import archive as _archive
from .. import filter as _filter
from .. import query
from . import limits

bp = Blueprint("archives", __name__)
log = logging.getLogger(__name__)

CHUNK = 64 * 1024           # bytes per streamed piece (below malloc's mmap threshold: no heap growth)
PAGE = 500                  # rows per keyset-paged query
FORMATS = {"sqlite": ("application/vnd.sqlite3", ".sqlite"),
           "csv.gz": ("application/gzip", ".csv.gz"),
           "jsonl.gz": ("application/gzip", ".jsonl.gz")}
COLUMNS = ", ".join(_archive.FLOW_NAMES)
# flows with its rowid as rid and the derived totals the filter language names (pkts, bytes, ...);
# SQLite flattens this subquery, so the table's indexes still serve WHERE and ORDER BY.
SOURCE = ("(SELECT rowid AS rid, *, " + ", ".join(f"({expr}) AS {name}" for name, expr in
                                                  _archive.DERIVED.items()) + " FROM flows)")
_cache: dict[tuple[str, int, int], dict[str, Any]] = {}
_cache_lock = threading.Lock()


def archive_paths() -> dict[str, Path]:
    """Archive files by name, oldest first; 503 when the directory cannot be read (every page
    that shows records says so, rather than failing or showing an empty sensor)."""
    directory = current_app.config["ARCHIVE_DIR"]
    try:
        return {p.name: p for p in _archive.list_archives(directory)}
    except OSError as exc:
        abort(503, unreadable_directory(directory, exc))


def unreadable_directory(directory: str, exc: OSError) -> str:
    """What to tell the admin when the page's user cannot list the archive directory."""
    return (f"The archive directory {directory} cannot be read ({exc.strerror or exc}): the page's "
            "user (flowtap-web, in group flowtap) needs to read and enter it.")


def find(name: str) -> Path:
    """The archive called ``name``; 404 unless it is one that list_archives shows."""
    path = archive_paths().get(name)
    if path is None:
        abort(404, "No such archive.")
    return path


def limit_time(conn: sqlite3.Connection, seconds: float) -> None:
    """Interrupt any statement on conn once ``seconds`` have passed from now."""
    deadline = time.monotonic() + seconds
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)


def connect(path: Path, seconds: float) -> sqlite3.Connection:
    """A read-only connection with the filter's SQL functions, interrupted after ``seconds``."""
    conn = _archive.open_readonly(path)
    _filter.register_sql_functions(conn)
    limit_time(conn, seconds)
    return conn


def request_conn(path: Path) -> sqlite3.Connection:
    """This request's connection to an archive (in ``g``; closed at teardown)."""
    conns = g.setdefault("archives", {})
    if path not in conns:
        conns[path] = connect(path, current_app.config["QUERY_TIME_LIMIT"])
    return conns[path]


def describe(path: Path) -> dict[str, Any]:
    """Name, size, state, span, records and drops of one archive (closed ones are cached)."""
    try:
        st = path.stat()
        closed = _archive.is_closed(path)
    except OSError as exc:           # deleted by retention since the listing
        return {"name": path.name, "size": None, "closed": True, "error": exc.strerror or str(exc),
                "state": "unreadable", "first": None, "last": None, "records": None, "drops": None}
    size = st.st_size + _wal_size(path)
    key = (path.name, st.st_mtime_ns, st.st_size)
    if closed and key in _cache:
        return _cache[key]
    d: dict[str, Any] = {"name": path.name, "size": size, "closed": closed, "error": None}
    try:
        conn = request_conn(path)
        info = _archive.read_info(conn)
        d["state"] = info.get("state", "?")
        if closed:
            d.update(first=info.get("first_stime"), last=info.get("last_ltime"),
                     records=info.get("records"), drops=info.get("drops"))
        else:   # rows are only ever appended: max(rowid) is the count, cheaply
            first, last, n = conn.execute(
                "SELECT min(stime), max(stime), coalesce(max(rowid), 0) FROM flows").fetchone()
            drops = conn.execute("SELECT coalesce(sum(kernel_drops), 0) + coalesce(sum(interface_drops), 0)"
                                 " FROM sensor_status").fetchone()[0]
            d.update(first=first, last=last, records=n, drops=drops)
    except (sqlite3.Error, _archive.ArchiveError) as exc:
        d.update(state="unreadable", error=str(exc), first=None, last=None, records=None, drops=None)
    if closed and d["error"] is None:
        with _cache_lock:
            if len(_cache) > 10_000:
                _cache.clear()
            _cache[key] = d
    return d


def _wal_size(path: Path) -> int:
    """Bytes in an archive's WAL file (gone once the writer closed the archive: 0)."""
    try:
        return Path(f"{path}-wal").stat().st_size
    except FileNotFoundError:
        return 0


def oldest_record() -> float | None:
    """Start time of the oldest record kept (the retention horizon), or None."""
    for path in archive_paths().values():
        first = describe(path).get("first")
        if first is not None:
            return first
    return None


def recent_sessions(current: str | None, limit: int = 50) -> tuple[list[dict[str, Any]], float | None]:
    """The busiest records of the minute up to the newest record of the open archive."""
    paths = archive_paths()
    path = paths.get(current or "") or next((p for p in reversed(paths.values())
                                             if not _archive.is_closed(p)), None)
    if path is None:
        return [], None
    conn = request_conn(path)
    recent = "SELECT * FROM flows ORDER BY rowid DESC LIMIT 5000"
    newest = conn.execute(f"SELECT max(ltime) FROM ({recent})").fetchone()[0]
    if newest is None:
        return [], None
    cur = conn.execute(f"SELECT {COLUMNS}, spkts + dpkts AS pkts, sbytes + dbytes AS bytes FROM ({recent})"
                       " WHERE ltime >= ? ORDER BY bytes DESC LIMIT ?", (newest - 60, limit))
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row)) for row in cur], newest


def keyset_rows(path: Path, seconds: float, where: str = "1", params: Iterable[Any] = (),
                by_time: bool = False,
                prepare: Callable[[sqlite3.Connection], None] | None = None) -> Iterator[tuple]:
    """Every flows row of one archive matching ``where``, read in short queries of PAGE rows.

    Rows present when reading starts are read (the table is append-only, so this is a consistent
    snapshot); ordered by rowid, or by (stime, rowid) with ``by_time``. ``prepare`` runs on the
    connection first (the temporary tables a WHERE clause reads: ``search.alert_links``).
    """
    conn = connect(path, seconds)
    conn.execute("PRAGMA cache_size = -256")      # a sequential read needs little cache (KiB)
    params = list(params)
    try:
        if prepare is not None:
            prepare(conn)
        top = query.last_rowid(conn) or 0
        last: tuple = (float("-inf"), 0) if by_time else (0,)
        while True:
            if by_time:
                sql = (f"SELECT {COLUMNS}, stime, rid FROM {SOURCE} WHERE rid <= ? AND ({where}) AND"
                       " (stime > ? OR (stime = ? AND rid > ?)) ORDER BY stime, rid LIMIT ?")
                args = [top, *params, last[0], last[0], last[1], PAGE]
            else:
                sql = (f"SELECT {COLUMNS}, rid FROM {SOURCE} WHERE rid > ? AND rid <= ? AND ({where})"
                       " ORDER BY rid LIMIT ?")
                args = [last[0], top, *params, PAGE]
            try:
                rows = conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                if not _archive.is_damage(e):
                    raise
                yield from _around_damage(conn, path, where, [top, *params], last, by_time)
                return
            if not rows:
                return
            width = len(_archive.FLOW_NAMES)
            for row in rows:
                yield row[:width]
            last = rows[-1][width:]
    finally:
        conn.close()


def _around_damage(conn: sqlite3.Connection, path: Path, where: str, params: list[Any],
                   last: tuple, by_time: bool) -> Iterator[tuple]:
    """The rows of a damaged archive after keyset position ``last``, read around the damage
    (``query.scan``); oldest first with ``by_time`` (their (stime, rowid) are read and sorted,
    then the rows fetched by rowid). What could not be read is logged: a download has no other
    place to say it."""
    bounded = f"rid <= ? AND ({where})"          # params start with the snapshot's last rowid
    keys: list[tuple] = []
    try:
        if not by_time:
            yield from query.scan(conn, path, COLUMNS, bounded, params, indexed=False, after=last[0])
        else:
            keys.extend(k for k in query.scan(conn, path, "stime, rid", bounded, params, indexed=False)
                        if k > last)
    except query.QueryTimeout:
        raise
    except query.QueryError as e:
        log.error("download of %s: %s", path.name, e)
    keys.sort()
    for i in range(0, len(keys), PAGE):
        rids = [rid for _, rid in keys[i:i + PAGE]]
        sql = (f"SELECT rowid, {COLUMNS} FROM flows NOT INDEXED "
               f"WHERE rowid IN ({', '.join('?' * len(rids))})")
        rows = {row[0]: row[1:] for row in conn.execute(sql, rids)}
        yield from (rows[rid] for rid in rids if rid in rows)


def csv_chunks(rows: Iterable[tuple]) -> Iterator[bytes]:
    """CSV text with a header of Argus field names, in pieces of about CHUNK bytes."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(_archive.FLOW_NAMES)
    for row in rows:
        out.writerow(row)
        if buf.tell() >= CHUNK:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def jsonl_chunks(rows: Iterable[tuple]) -> Iterator[bytes]:
    """One JSON object per record and line, in pieces of about CHUNK bytes."""
    names = _archive.FLOW_NAMES
    parts: list[str] = []
    size = 0
    for row in rows:
        line = json.dumps(dict(zip(names, row)), separators=(",", ":")) + "\n"
        parts.append(line)
        size += len(line)
        if size >= CHUNK:
            yield "".join(parts).encode()
            parts, size = [], 0
    yield "".join(parts).encode()


def gzip_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Compress a stream incrementally into one gzip member."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = z.compress(chunk)
        if out:
            yield out
    yield z.flush()


SQLITE_HEADER = b"SQLite format 3\0"


def open_archive_file(path: Path) -> BinaryIO:
    """A closed archive's file to stream as it is: opened without following a link (one swapped in
    after the listing), and only a regular file that starts as SQLite.

    :raises OSError: a link (ELOOP) or unreadable. :raises ArchiveError: not an SQLite file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    f = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise _archive.ArchiveError(f"{path.name}: not an SQLite archive file")
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def file_chunks(f: Any) -> Iterator[bytes]:
    """A file's bytes in CHUNK pieces; closes the file at the end."""
    try:
        while block := f.read(CHUNK):
            yield block
    finally:
        f.close()


def snapshot(path: Path) -> Any:
    """A consistent copy of an open archive (SQLite backup API) as an unlinked temporary file."""
    tmpdir = Path(current_app.instance_path) / "tmp"
    tmpdir.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmpdir, suffix=".sqlite")
    os.close(fd)
    try:
        src = _archive.open_readonly(path)
        dst = sqlite3.connect(tmp)
        for conn in (src, dst):
            conn.execute("PRAGMA cache_size = -256")
        try:
            src.backup(dst, pages=4096)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
            src.close()
        f = open(tmp, "rb")
    finally:
        os.unlink(tmp)
    return f


def download_response(chunks: Iterable[bytes], filename: str, mimetype: str) -> Response:
    """A streamed attachment."""
    resp = Response(chunks, mimetype=mimetype, direct_passthrough=True)
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return resp


@bp.route("/archives")
def index():
    """Every archive: span, size, records, drops, open or closed, with download links."""
    rows = [describe(p) for p in reversed(archive_paths().values())]
    return render_template("archives.html", rows=rows, formats=FORMATS)


@bp.route("/archives/<name>/<fmt>")
@limits.download_slot
def download(name: str, fmt: str):
    """One archive as SQLite (the open one as a snapshot), CSV.gz or JSON-lines.gz."""
    if fmt not in FORMATS:
        abort(404, "Unknown format.")
    path = find(name)
    mimetype, ext = FORMATS[fmt]
    filename = path.name.removesuffix(".sqlite") + ext
    if fmt == "sqlite":
        try:
            f = open_archive_file(path) if _archive.is_closed(path) else snapshot(path)
        except (sqlite3.Error, _archive.ArchiveError, OSError) as exc:
            abort(404, f"Unreadable archive: {exc}")
        return download_response(file_chunks(f), filename, mimetype)
    try:
        connect(path, 1).close()                         # fail now, not half way through a stream
    except (sqlite3.Error, _archive.ArchiveError) as exc:
        abort(404, f"Unreadable archive: {exc}")
    rows = keyset_rows(path, current_app.config["DOWNLOAD_TIME_LIMIT"])
    body = csv_chunks(rows) if fmt == "csv.gz" else jsonl_chunks(rows)
    return download_response(gzip_chunks(body), filename, mimetype)
