"""The live record stream behind ``flowtap ra -S``: ``GET /api/v1/stream?filter=EXPR[&t=RANGE]``
with ``Authorization: Bearer TOKEN`` (tokens.py) answers with JSON lines (``application/x-ndjson``,
chunked) for as long as the client stays::

    {"flowtap": "stream", "version": 1, "archive": "flows-….sqlite", "rowid": 1234}   the attach point
    {"srcid": "tap1", "seq": 17, "cause": "Stop", …}      a record, as query.read_records gives it
    {"keepalive": 1700000000.5}                           after KEEPALIVE seconds without a line
    {"end": "the API token was revoked"}                  last, when the sensor ends the stream

The page has no capabilities and never writes an archive (the recorder, another process, is the
only writer), so the stream follows the archives: at attach it notes the newest archive and its
last rowid, then every POLL seconds reads the rows added since, through query.py's compiled filter
(``Tail``). A newer archive appears only after the writer closed the older one, so then the older
one's remaining rows are read and the newer one is followed from its first row. Records thus
arrive once committed (within ``archive.commit_interval`` + POLL of their end) and are exactly the
rows the archives get from the attach on.

Each yielded piece goes out at once: waitress 3 writes to the socket as soon as one byte is
buffered (its ``send_bytes`` is 1), and nginx, told by ``X-Accel-Buffering: no`` (and its own
``proxy_buffering off``), passes it on. A bad filter is a 400 with the filter's one-line error
before anything streams; more than STREAM_LIMIT streams at once a 503 (limits.py), so waitress
keeps threads for the page. An archive directory the page cannot read is a 503 at attach, and ends
a running stream with an ``end`` line.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from flask import Blueprint, Response, current_app, g, request

from .. import archive as _archive
from .. import query
from . import archives, limits, search, tokens
from .auth import plain_answer

log = logging.getLogger(__name__)
bp = Blueprint("stream", __name__)

HEADER = {"flowtap": "stream", "version": 1}
CHUNK = 64 * 1024           # bytes of JSON lines handed to the server at once
_dumps = json.JSONEncoder(separators=(",", ":")).encode


class Tail:
    """The rows that the archives in ``directory`` get from now on and that match ``ast``.

    :param time_limit: seconds one read may take (query.py's progress-handler limit).
    """

    WINDOW = 5000           # rowids per read: bounded memory and short reads however far behind

    def __init__(self, directory: Path, ast: Any, time_limit: float):
        self.directory, self.ast, self.time_limit = directory, ast, time_limit
        files = _archive.list_archives(directory)
        self.done = {p.name for p in files[:-1]}          # archives with nothing more to read
        self.current: Path | None = files[-1] if files else None
        self.last = self._top(self.current) if self.current else 0

    @staticmethod
    def _top(path: Path) -> int:
        try:
            conn = query.connect(path)
        except query.QueryError:
            return 0                                       # still being created: no rows yet
        try:
            return conn.execute("SELECT coalesce(max(rowid), 0) FROM flows").fetchone()[0]
        finally:
            conn.close()

    def poll(self) -> Iterator[dict[str, Any]]:
        """Every matching row committed since the last poll, in archive and rowid order."""
        while True:
            files = [p for p in _archive.list_archives(self.directory) if p.name not in self.done]
            if self.current is None:
                if not files:
                    return
                self.current, self.last = files[0], 0
            newer = [p for p in files if p != self.current]
            try:
                yield from self._rows(self.current)
            except query.QueryError as e:
                if not newer:
                    return                                 # being created: try at the next poll
                log.warning("stream: skipping %s: %s", self.current.name, e)
            if not newer:
                return
            self.done.add(self.current.name)
            self.current, self.last = newer[0], 0

    def _rows(self, path: Path) -> Iterator[dict[str, Any]]:
        """The matching rows of ``path`` after rowid ``last``, a WINDOW of rowids per query, each
        on its own short-lived connection (an idle reader would keep the writer from closing it)."""
        while True:
            fq = query.plan_file(path, self.ast, time.monotonic() + self.time_limit)
            try:
                top = fq.conn.execute("SELECT coalesce(max(rowid), 0) FROM flows").fetchone()[0]
                upto = min(top, self.last + self.WINDOW)
                rows = []
                if fq.where is not None and upto > self.last:
                    where, params = fq.where
                    # NOT INDEXED: the rowid range is the selective part, not a host or port index.
                    sql = query.record_sql(f"rid > ? AND rid <= ? AND ({where})", indexed=False)
                    rows = fq.conn.execute(sql, [self.last, upto, *params]).fetchall()
            except sqlite3.Error as e:
                raise query.QueryError(str(e)) from None
            finally:
                fq.conn.close()
            self.last = max(self.last, upto)
            for row in rows:
                yield dict(zip(query.RECORD_ORDER, row))
            if upto >= top:
                return


@bp.route("/api/v1/stream")
def stream():
    """Records as they reach the archive, filtered on the sensor (see the module docstring)."""
    try:
        ast = search.selection(request.args)
    except search.SearchError as e:
        if e.position is None:
            return plain_answer(400, f"{e.field}: {e.message}")
        if e.field == "filter":
            return plain_answer(400, f"filter error at column {e.position}: {e.message}")
        return plain_answer(400, f"-t {request.args.get('t', '')!r}: {e.message} "
                                 f"(column {e.position})")
    streams = limits.slots("streams")
    give_back = streams.take()
    if give_back is None:
        return plain_answer(503, streams.busy_message(), {"Retry-After": str(limits.RETRY_AFTER)})
    token, client, cfg = g.api_token, request.remote_addr, current_app.config
    try:
        tail = Tail(Path(cfg["ARCHIVE_DIR"]), ast, cfg["QUERY_TIME_LIMIT"])
        attach = {"archive": tail.current.name if tail.current else None, "rowid": tail.last}
        body = _lines(tail, attach, token["id"], tokens.store(),
                      request.environ.get("waitress.client_disconnected", lambda: False),
                      cfg["STREAM_POLL"], cfg["STREAM_KEEPALIVE"])
        resp = Response(body, mimetype="application/x-ndjson")
    except OSError as exc:                      # the archive directory: nothing to follow
        give_back()
        return plain_answer(503, archives.unreadable_directory(cfg["ARCHIVE_DIR"], exc),
                            {"Retry-After": str(limits.RETRY_AFTER)})
    except BaseException:
        give_back()
        raise
    resp.headers["X-Accel-Buffering"] = "no"          # nginx: pass each line on at once
    log.info("stream: token %r from %s attached at %s rowid %d, filter %r", token["name"], client,
             attach["archive"], attach["rowid"], request.args.get("filter", ""))

    def detach() -> None:        # the server closes the body however the stream ended
        give_back()
        log.info("stream: token %r from %s detached", token["name"], client)
    resp.call_on_close(detach)
    return resp


def _lines(tail: Tail, attach: dict[str, Any], token_id: str, store: tokens.ApiTokens,
           disconnected: Callable[[], bool], poll: float, keepalive: float) -> Iterator[bytes]:
    """The response body: the header line, then records and keep-alives until the client goes or
    the token is revoked."""
    yield (_dumps({**HEADER, **attach}) + "\n").encode()
    quiet_since = time.monotonic()
    while not disconnected():
        if not store.active(token_id):
            yield b'{"end":"the API token was revoked"}\n'
            return
        parts, size = [], 0
        try:
            for record in tail.poll():
                parts.append(_dumps(record) + "\n")
                size += len(parts[-1])
                if size >= CHUNK:
                    yield "".join(parts).encode()
                    parts, size = [], 0
                    quiet_since = time.monotonic()
        except OSError as exc:                  # the archive directory became unreadable
            yield "".join(parts).encode() + (_dumps({"end": f"the archive directory cannot be read "
                                                            f"({exc.strerror or exc})"}) + "\n").encode()
            return
        if parts:
            yield "".join(parts).encode()
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= keepalive:
            # Lets the client and proxies tell a quiet sensor from a dead connection, and makes a
            # write fail (ending this stream) when the client has gone.
            yield (_dumps({"keepalive": round(time.time(), 3)}) + "\n").encode()
            quiet_since = time.monotonic()
        time.sleep(poll)
