"""What one client may hold, and for how long: slots for the long answers (live streams, downloads),
the waitress server whose threads and write timeout follow from them, and whole numbers from a
request kept to a range.

waitress answers each request on one of a fixed number of threads, and a long answer holds its
thread for as long as its client takes: a live stream until the client leaves, a download until the
client has read it (waitress blocks the thread once ``outbuf_high_watermark`` bytes wait for a
client that does not read). So each kind of long answer has a number of slots (STREAM_LIMIT,
DOWNLOAD_LIMIT); a request that finds them all taken is answered 503 with Retry-After at once, and
the server runs PAGE_THREADS threads more than all slots together, so pages and /healthz always
find a thread. A client that stops reading is dropped after WRITE_TIMEOUT seconds, which frees its
slot: waitress itself never times out a write (its ``channel_timeout`` spares a connection with a
request in progress), so the kernel does it (``TCP_USER_TIMEOUT``: data unacknowledged, or a zero
window not reopened, for that long aborts the connection; the blocked write then fails).

Example::

    server = limits.make_server(app, "127.0.0.1:8080")
    server.run()
"""
from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, current_app
from werkzeug.exceptions import ServiceUnavailable

PAGE_THREADS = 4            # threads no long answer may take: pages, /healthz, /metrics, the API
RETRY_AFTER = 60            # seconds a refused client is told to wait


class Slots:
    """At most ``limit`` answers of one kind (``kind``: "streams", "downloads") at once."""

    def __init__(self, kind: str, limit: int):
        self.kind, self.limit, self.taken = kind, limit, 0
        self._lock = threading.Lock()

    def take(self) -> Callable[[], None] | None:
        """A slot: the function that gives it back (once, however often it is called), or None
        when every slot is taken."""
        with self._lock:
            if self.taken >= self.limit:
                return None
            self.taken += 1
        given_back = threading.Event()

        def give_back() -> None:
            with self._lock:
                if not given_back.is_set():
                    given_back.set()
                    self.taken -= 1
        return give_back

    def busy_message(self) -> str:
        return f"the sensor serves {self.limit} {self.kind} at most: try again later"


def init_app(app: Flask) -> None:
    """The slots of each kind of long answer (STREAM_LIMIT, DOWNLOAD_LIMIT)."""
    app.extensions["flowtap_slots"] = {"streams": Slots("streams", app.config["STREAM_LIMIT"]),
                                       "downloads": Slots("downloads", app.config["DOWNLOAD_LIMIT"])}


def slots(kind: str) -> Slots:
    """This app's slots for ``kind``."""
    return current_app.extensions["flowtap_slots"][kind]


class SlotBody:
    """A streamed body that gives its slot back once the last piece is out or it is closed (the
    server closes it however the answer ended), whichever comes first."""

    def __init__(self, body: Iterable[bytes], give_back: Callable[[], None]):
        self._body, self._pieces, self._give_back = body, iter(body), give_back

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._pieces)
        except StopIteration:
            self._give_back()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._give_back()


def download_slot(view: Callable[..., Any]) -> Callable[..., Any]:
    """Make a download view hold one of DOWNLOAD_LIMIT slots while its answer streams; with every
    slot taken, a 503 with Retry-After instead.

    Example::

        @bp.route("/archives/<name>/<fmt>")
        @limits.download_slot
        def download(name, fmt): ...
    """
    @functools.wraps(view)
    def holding_a_slot(*args: Any, **kwargs: Any) -> Any:
        downloads = slots("downloads")
        give_back = downloads.take()
        if give_back is None:
            raise ServiceUnavailable(downloads.busy_message(), retry_after=RETRY_AFTER)
        try:
            resp = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            give_back()
            raise
        if not resp.is_streamed:               # an answer in memory holds no thread for long
            give_back()
            return resp
        resp.response = SlotBody(resp.response, give_back)
        return resp
    return holding_a_slot


def thread_count(config: dict[str, Any]) -> int:
    """waitress threads: one per slot of every kind, and PAGE_THREADS for everything else."""
    return PAGE_THREADS + config["STREAM_LIMIT"] + config["DOWNLOAD_LIMIT"]


def make_server(app: Flask, listen: str) -> Any:
    """The waitress server for ``app`` on ``listen`` (HOST:PORT), not yet running (``.run()``).

    A streaming download blocks its thread once 1 MiB waits for the client, rather than spooling
    the rest to a temporary file: memory and flash writes stay flat. Reading ahead one request lets
    a stream notice at once that its client hung up. nginx on this box terminates TLS
    (systemd/nginx-flowtap.conf): its X-Forwarded-For/-Proto are believed, nobody else's.
    """
    import waitress

    server = waitress.create_server(
        app, listen=listen, threads=thread_count(app.config), ident="flowtap",
        max_request_body_size=1 << 20, outbuf_high_watermark=1 << 20, channel_request_lookahead=1,
        trusted_proxy="127.0.0.1", trusted_proxy_count=1,
        trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"},
        clear_untrusted_proxy_headers=True)
    # waitress applies these to every connection it accepts (there is no keyword for them).
    timeout_ms = int(app.config["WRITE_TIMEOUT"] * 1000)
    server.adj.socket_options = [*server.adj.socket_options,
                                 (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)]
    return server


def whole_number(raw: str, low: int, high: int) -> int | None:
    """``raw`` as a whole number from low to high, or None: only ASCII digits ('²' is a digit to
    str.isdigit, not to int) and no more of them than ``high`` has (int() refuses 4301 digits)."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(high)):
        return None
    value = int(raw)
    return value if low <= value <= high else None
