"""Inputs that cannot be read twice: ``-r -`` (stdin) and named pipes.

``ra`` tells a capture from a record stream by its first bytes. A regular file can be opened
again after that; a pipe cannot give those bytes back, and opening a FIFO a second time waits
for a writer that never comes. So the first bytes are read once (``sniff``) and put back in front
of the rest: as a text stream for a record stream (``text``), or through a pipe of our own that
libpcap opens by name for a capture (``relay``), so that
``tcpdump -w - | flowtap ra -r -`` meters exactly as ``flowtap ra -r FILE`` does.

The input is a binary file object (``sniffed``): unbuffered over a descriptor, or anything with
``read`` (click's test runner gives stdin as one).

Example::

    with capture_path("-") as path:       # "/dev/fd/N": libpcap reads the whole capture
        meter(path)
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import threading
from typing import IO, BinaryIO, Iterator

SNIFF_BYTES = 16               # enough for the SQLite, pcap, pcapng and record-stream magics
# The first four bytes of the capture files libpcap reads (pcap in both byte orders, with
# micro- or nanosecond times, Kuznetzov's variant; pcapng's section header block).
CAPTURE_MAGICS = tuple(bytes.fromhex(m) for m in (
    "d4c3b2a1", "a1b2c3d4", "4d3cb2a1", "a1b23c4d", "34cdb2a1", "a1b2cd34", "0a0d0d0a"))


def is_capture(head: bytes) -> bool:
    """True if ``head`` starts like a capture file libpcap reads."""
    return head[:4] in CAPTURE_MAGICS


def is_pipe(path: str) -> bool:
    """True for ``-`` and anything that is not a regular file or a directory (FIFO, character
    device, socket): inputs that can be read only once."""
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False                 # the normal open reports it
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def sniff(src: BinaryIO) -> bytes:
    """The first SNIFF_BYTES bytes of ``src`` (fewer only at end of input); with an unbuffered
    ``src``, everything after them is still in its descriptor."""
    head = b""
    while len(head) < SNIFF_BYTES:
        got = src.read(SNIFF_BYTES - len(head))
        if not got:
            break
        head += got
    return head


class _Prefixed(io.RawIOBase):
    """``head`` and then the rest of ``src``."""

    def __init__(self, head: bytes, src: BinaryIO):
        super().__init__()
        self._head, self._src = head, src

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._src.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def text(head: bytes, src: BinaryIO) -> IO[str]:
    """A UTF-8 text stream of ``head`` followed by the rest of ``src``."""
    return io.TextIOWrapper(io.BufferedReader(_Prefixed(head, src)), encoding="utf-8")


@contextlib.contextmanager
def relay(head: bytes, src: BinaryIO) -> Iterator[str]:
    """A path (``/dev/fd/N``) that reads ``head`` and then the rest of ``src``: a pipe fed by a
    thread, the bulk moved by ``splice`` in the kernel where ``src`` has a descriptor. Leaving
    the block closes the pipe, which ends the thread even if the reader stopped early."""
    r, w = os.pipe()

    def feed() -> None:
        try:
            view = memoryview(head)
            while view:
                view = view[os.write(w, view):]
            while _move(src, w):
                pass
        except OSError:
            pass                     # the reader is gone (EPIPE) or the input failed: EOF for it
        finally:
            os.close(w)

    threading.Thread(target=feed, name="pipe-relay", daemon=True).start()
    try:
        yield f"/dev/fd/{r}"
    finally:
        os.close(r)                  # a thread still waiting for input ends with the process


def _move(src: BinaryIO, dst: int) -> int:
    """Move up to 1 MiB from ``src`` to the pipe ``dst``; 0 at end of input."""
    try:
        fd = src.fileno()
    except (io.UnsupportedOperation, AttributeError):
        fd = -1                      # no descriptor (click's test runner): copied below
    if fd >= 0:
        try:
            return os.splice(fd, dst, 1 << 20)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise                # EINVAL/ENOSYS: this input cannot be spliced (a tty, ...)
    data = src.read(1 << 16) or b""
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)


class NotACapture(ValueError):
    """What came through a pipe is not a capture file (its first bytes say so)."""


@contextlib.contextmanager
def sniffed(path: str) -> Iterator[tuple[bytes, BinaryIO]]:
    """``path`` (a named pipe) or stdin (``-``) opened once, unbuffered, with its first bytes
    (``sniff``): what they do not take stays in the descriptor. Stdin that has no descriptor
    (click's test runner) is used as it is; stdin's descriptor stays open afterwards.

    :raises OSError: the pipe cannot be opened.
    """
    if path != "-":
        src: BinaryIO = open(path, "rb", buffering=0)
    else:
        try:
            src = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
        except (OSError, ValueError):
            src = sys.stdin.buffer
    try:
        yield sniff(src), src
    finally:
        if src is not sys.stdin.buffer:
            src.close()


@contextlib.contextmanager
def capture_path(path: str) -> Iterator[str]:
    """A path libpcap can open for the capture ``path``: the path itself for a file; for ``-``
    or a named pipe, a ``relay`` of it (read once).

    :raises NotACapture: the pipe carries something else. :raises OSError: it cannot be opened.
    """
    if not is_pipe(path):
        yield path
        return
    with sniffed(path) as (head, src):
        if not is_capture(head):
            raise NotACapture("not a capture (pcap or pcapng)" if head else "no input")
        with relay(head, src) as relayed:
            yield relayed
