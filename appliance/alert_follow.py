"""Follow growing IDS alert files (Suricata EVE, Snort ``alert_fast``/``alert_json``) into the
alert store beside the archives, as ``flowtap alerts follow`` (``flowtap-alerts.service``).

One thread. Every ``alerts.poll_interval`` it reads the new complete lines of each configured
file in chunks, parses them (``alert_formats.parse_line``) and imports at most ``alerts.batch``
alerts per call of ``alerts.import_alerts``. Only after that commit does it write each file's
position to the state file (tmp + fsync + rename), so a restart neither repeats nor loses an
alert; a repeat would be harmless anyway, since an alert's id is a hash of its line.

A position is (device, inode, offset, first bytes, format). The first bytes (``HEAD``) tell the
same file from a new one that reuses the inode, or from a truncated file refilled past the offset.

- Rotation (the path names another inode): the old file stays open and is read to its end until
  nobody has written it for ``ROTATED_QUIET`` seconds; the new file is read from 0. A file rotated
  while the follower was stopped is found again by inode in the same directory.
- Truncation (copytruncate; size below what was read, or the first bytes changed): from 0.
- A missing file is waited for (logged once); so is a missing or unwritable archive directory.
- A partial last line waits for its newline; one longer than ``MAX_LINE`` is a bad line, skipped
  to its newline. Bad lines are counted and logged, never fatal.
- A missing or unreadable state file means every file is read from its beginning: the ids
  dedupe, so that costs reading time, never a duplicate (starting at the end could lose alerts).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import click

from . import alert_formats, alerts, service
from . import config as config_mod
from .alert_types import Alert, AlertError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024              # bytes per read
MAX_LINE = alert_formats.MAX_LINE    # a partial line longer than this is a bad line
BATCH_BYTES = 8 << 20          # at most this many bytes of lines per batch: bounds memory
HEAD = 128                     # first bytes kept to recognise a file (EVE: past the µs timestamp)
DETECT = 4096                  # bytes given to alert_formats.detect
ROTATED_QUIET = 30.0           # seconds without writes before a rotated file is closed
SPAN_EVERY = 60.0              # seconds between looks at the archives' time span (fast's year)
BAD_LOG_EVERY = 60.0           # seconds between log lines about one file's bad lines
STATE_VERSION = 1


@dataclasses.dataclass
class Position:
    """Where reading of one file stands: what the state file keeps."""

    dev: int
    ino: int
    offset: int = 0            # end of the last line whose alert is committed
    head: bytes = b""          # the file's first bytes (up to HEAD)
    format: str = ""           # "" until detected

    def to_json(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "head": self.head.hex(),
                "format": self.format}

    @classmethod
    def from_json(cls, d: Any) -> Position:
        """:raises ValueError: not a position."""
        if not isinstance(d, dict):
            raise ValueError("a position must be an object")
        dev, ino, offset, head, fmt = (d.get(k) for k in ("dev", "ino", "offset", "head", "format"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (dev, ino, offset)):
            raise ValueError("dev, ino and offset must be integers >= 0")
        if not isinstance(head, str) or len(head) > 2 * HEAD or not isinstance(fmt, str):
            raise ValueError("head and format must be strings")
        return cls(dev, ino, offset, bytes.fromhex(head), fmt)


class Reader:
    """One open file: its position, and lines read but not yet handed out."""

    def __init__(self, name: str, fd: int, pos: Position):
        self.name, self.fd, self.pos = name, fd, pos
        self.consumed = pos.offset             # end of the last line handed out
        self.read_at = pos.offset              # next byte to read
        self.partial = bytearray()             # the line being read, before its newline
        self.skipping = False                  # inside an over-long line
        self.ready: collections.deque[tuple[bytes | None, int]] = collections.deque()
        self.too_long = 0                      # over-long lines met (the caller counts them bad)

    def close(self) -> None:
        os.close(self.fd)

    def rewind(self) -> None:
        """Forget everything after the committed offset (an import failed: read it again)."""
        self.consumed = self.read_at = self.pos.offset
        self.partial.clear()
        self.ready.clear()
        self.skipping = False

    def restart(self) -> None:
        """The file was truncated or rewritten: read it from its beginning."""
        self.pos = Position(self.pos.dev, self.pos.ino, 0, b"", self.pos.format)
        self.rewind()

    def changed(self) -> bool:
        """True if the file shrank below what was read or its first bytes are not the ones seen."""
        size = os.fstat(self.fd).st_size
        return size < self.read_at or os.pread(self.fd, len(self.pos.head), 0) != self.pos.head

    def next_line(self) -> tuple[bytes | None, int] | None:
        """The next complete line and the offset after it (None as the line: the end of an
        over-long line, nothing to parse); None when no complete line is there yet."""
        while not self.ready:
            if not self._fill():
                return None
        return self.ready.popleft()

    def _fill(self) -> bool:
        chunk = os.pread(self.fd, CHUNK, self.read_at)
        if not chunk:
            return False
        start_at = self.read_at
        if len(self.pos.head) < HEAD and start_at == len(self.pos.head):
            self.pos.head += chunk[:HEAD - len(self.pos.head)]
        self.read_at += len(chunk)
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if self.skipping:
                self.ready.append((None, start_at + nl + 1))
                self.skipping = False
            elif len(self.partial) + nl - start > MAX_LINE:
                self.too_long += 1
                self.ready.append((None, start_at + nl + 1))
            else:
                self.ready.append((bytes(self.partial + chunk[start:nl]), start_at + nl + 1))
            self.partial.clear()
            start = nl + 1
        if not self.skipping:
            self.partial += chunk[start:]
            if len(self.partial) > MAX_LINE:
                self.too_long += 1
                self.skipping = True
                self.partial.clear()
        return True

    def final_line(self) -> tuple[bytes | None, int] | None:
        """The unterminated last line of a file nobody writes any more (a rotated file), as
        ``next_line`` gives lines; None if there is none."""
        if self.ready or not (self.partial or self.skipping) or os.fstat(self.fd).st_size != self.read_at:
            return None
        line = None if self.skipping else bytes(self.partial)
        self.partial.clear()
        self.skipping = False
        return line, self.read_at


def _open(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """A regular file opened for reading (O_NONBLOCK: a FIFO must not hang the open).

    :raises OSError: cannot open it, or it is not a regular file (EINVAL).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(22, "not a regular file", str(path))
    return fd, st


def _matches(fd: int, pos: Position) -> bool:
    """True if the open file is the one ``pos`` was taken in (not truncated, same first bytes)."""
    return os.fstat(fd).st_size >= pos.offset and os.pread(fd, len(pos.head), 0) == pos.head


def _find_inode(directory: str, pos: Position) -> tuple[int, str] | None:
    """The file of ``pos`` under another name in ``directory`` (rotated while we were stopped)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        if entry.inode() != pos.ino:
            continue
        try:
            fd, st = _open(entry.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (pos.dev, pos.ino) and _matches(fd, pos):
            return fd, entry.path
        os.close(fd)
    return None


class Source:
    """One configured path: the file it names now and rotated files still being read."""

    def __init__(self, path: str, fmt: str, saved: Sequence[Position]):
        self.path, self.fmt = path, fmt
        self.current: Reader | None = None
        self.rotated: list[Reader] = []
        # As alerts import counts, but first_bad's number is a byte offset: a follower that starts
        # mid-file knows no line numbers.
        self.stats = alert_formats.ReadStats()
        self.said: set[str] = set()            # conditions already logged (logged once)
        self.bad_logged = 0.0
        self._resume(saved)

    def say_once(self, key: str, level: int, msg: str, *args: Any) -> None:
        if key not in self.said:
            self.said.add(key)
            log.log(level, msg, *args)

    def _resume(self, saved: Sequence[Position]) -> None:
        """Reopen the files of the saved positions: the path's own, and rotated ones by inode."""
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        for pos in saved:
            if st is not None and (pos.dev, pos.ino) == (st.st_dev, st.st_ino):
                self._open_current(pos)
                continue
            found = _find_inode(os.path.dirname(self.path), pos)
            if found is None:
                log.warning("%s: the file read up to byte %d was rotated away while stopped and is "
                            "gone: alerts written to it after that are not imported", self.path, pos.offset)
                continue
            fd, name = found
            log.info("%s: finishing %s (rotated while stopped) from byte %d", self.path, name, pos.offset)
            self.rotated.append(Reader(name, fd, pos))

    def _open_current(self, pos: Position | None = None) -> bool:
        try:
            fd, st = _open(self.path)
        except OSError as e:
            level = logging.INFO if isinstance(e, FileNotFoundError) else logging.WARNING
            self.say_once("open", level, "%s: waiting for it (%s)", self.path, e.strerror)
            return False
        self.said.discard("open")
        if pos is None or (pos.dev, pos.ino) != (st.st_dev, st.st_ino) or not _matches(fd, pos):
            if pos is not None:
                log.warning("%s: changed while stopped (truncated or replaced): reading it from the start",
                            self.path)
            pos = Position(st.st_dev, st.st_ino, format=self.fmt if self.fmt != "auto" else "")
        self.current = Reader(self.path, fd, pos)
        return True

    def refresh(self) -> bool:
        """Notice rotation, truncation, disappearance; True if anything changed the positions."""
        dirty = False
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        cur = self.current
        if cur is not None and (st is None or (st.st_dev, st.st_ino) != (cur.pos.dev, cur.pos.ino)):
            log.info("%s: rotated (%s): reading the old file to its end, then the new one",
                     self.path, "gone" if st is None else "new file")
            self.rotated.append(cur)
            self.current = cur = None
            dirty = True
        elif cur is not None and cur.changed():
            log.warning("%s: truncated (copytruncate?): reading it from the start", self.path)
            cur.restart()
            dirty = True
        if cur is None and st is not None:
            dirty |= self._open_current()
        elif st is None:
            self.say_once("open", logging.INFO, "%s: waiting for it (no such file)", self.path)
        return dirty

    def readers(self) -> list[Reader]:
        """Oldest first: rotated files before the current one."""
        return self.rotated + ([self.current] if self.current else [])

    def format_of(self, r: Reader) -> str | None:
        """The reader's format, detected from its first line if need be; None: not followable."""
        if self.fmt != "auto":
            r.pos.format = self.fmt
        if not r.pos.format:
            head = os.pread(r.fd, DETECT, 0)
            complete = b"\n" in head or len(head) >= DETECT
            try:
                fmt = alert_formats.detect(head)
            except AlertError as e:
                if complete:
                    self.say_once(f"detect {r.pos.ino}", logging.WARNING, "%s: not an alert file (%s): "
                                  "not followed until it is replaced", r.name, e)
                return None
            if not complete and fmt != "unified2":
                return None                    # a text format shows in its complete first line
            r.pos.format = fmt
        if r.pos.format not in config_mod.ALERT_FORMATS:
            self.say_once(f"format {r.pos.ino}", logging.WARNING, "%s: %s is not followed (not a "
                          "line format): import it with flowtap alerts import", r.name, r.pos.format)
            return None
        return r.pos.format

    def bad(self, r: Reader, offset: int, why: str, text: str = "") -> None:
        self.stats.note_bad(offset, why, text)
        now = time.monotonic()
        if self.stats.bad == 1 or now - self.bad_logged >= BAD_LOG_EVERY:
            self.bad_logged = now
            log.warning("%s: bad line at byte %d: %s: %.120s (%d bad lines so far)", r.name, offset,
                        why, text, self.stats.bad)

    def close(self) -> None:
        for r in self.readers():
            r.close()
        self.current, self.rotated = None, []


class Follower:
    """Follows files into the alert store of an archive directory.

    :param files: absolute paths (``alerts.files``).
    :param store: the archive directory (``alerts.store_dir`` of a data or archive directory).
    :param state_file: where positions are kept (``AlertsConfig.state_path``).
    Example::

        with Follower(["/var/log/suricata/eve.json"], Path("/var/lib/flowtap/archive"),
                      Path("/var/lib/flowtap/alerts/follow.json")) as f:
            f.drain()
    """

    def __init__(self, files: Iterable[str], store: Path, state_file: Path, fmt: str = "auto",
                 batch: int = 5000):
        self.store, self.state_file, self.batch = Path(store), Path(state_file), batch
        saved = self._load_state()
        self.sources = [Source(p, fmt, saved.get(p, [])) for p in dict.fromkeys(files)]
        self.totals = alerts.ImportResult()
        self._span: tuple[float, float] | None = None
        self._span_at = -SPAN_EVERY
        self.store_error: str | None = None     # why the last import failed
        self._rounds = 0

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for s in self.sources:
            s.close()

    # -- state ------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, list[Position]]:
        try:
            data = json.loads(self.state_file.read_bytes())
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION \
                    or not isinstance(data.get("files"), dict):
                raise ValueError(f"not a version {STATE_VERSION} state file")
            return {path: [Position.from_json(p) for p in positions]
                    for path, positions in data["files"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as e:   # JSONDecodeError is a ValueError
            log.warning("%s: unreadable (%s): reading every file from its beginning (alerts already "
                        "stored are recognised by their id and not stored twice)", self.state_file, e)
            return {}

    def _save_state(self) -> None:
        """Replace the state file atomically: tmp + fsync + rename + fsync of the directory."""
        data = {"version": STATE_VERSION,
                "files": {s.path: [r.pos.to_json() for r in s.readers()] for s in self.sources}}
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
            dirfd = os.open(self.state_file.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as e:
            # The alerts are stored; a restart reads them again and the ids dedupe them.
            log.error("%s: cannot save positions: %s", self.state_file, e)

    # -- one round --------------------------------------------------------------------------------

    def _span_now(self) -> tuple[float, float] | None:
        """The archives' time span, the reference for the year of year-less fast lines."""
        now = time.monotonic()
        if now - self._span_at >= SPAN_EVERY:
            self._span_at = now
            self._span = alerts.recorded_span(self.store)
        return self._span

    def step(self) -> bool:
        """Read up to one batch from every file, import it, then save the positions.

        Returns True if a limit (``batch`` alerts, ``BATCH_BYTES``) ended the round: more is
        waiting. A failed import is logged (once until it works again) and read again next round.
        """
        dirty = False
        for s in self.sources:
            dirty |= s.refresh()
        batch: list[Alert] = []
        budget = BATCH_BYTES
        k = self._rounds % max(len(self.sources), 1)     # each file goes first in turn: no starving
        self._rounds += 1
        counted = [dataclasses.replace(s.stats) for s in self.sources]
        for s in self.sources[k:] + self.sources[:k]:
            for r in s.readers():
                if len(batch) < self.batch and budget > 0:
                    budget -= self._read(s, r, batch, budget)
        full = len(batch) >= self.batch or budget <= 0
        if batch:
            try:
                result = alerts.import_alerts(self.store, batch, link=False)
            except (alerts.AlertStoreError, OSError) as e:
                if self.store_error is None:
                    log.error("cannot import into %s (%s): retrying every poll", self.store, e)
                self.store_error = str(e)
                for s, stats in zip(self.sources, counted):
                    s.stats = stats                    # the lines are read again next round
                    for r in s.readers():
                        r.rewind()
                return False
            if self.store_error is not None:
                log.info("importing into %s again", self.store)
            self.store_error = None
            for f in dataclasses.fields(result):
                setattr(self.totals, f.name, getattr(self.totals, f.name) + getattr(result, f.name))
        for s in self.sources:
            for r in s.readers():
                dirty |= r.consumed != r.pos.offset
                r.pos.offset = r.consumed      # committed: only now may the state say so
            dirty |= self._close_quiet(s)
        if dirty:
            self._save_state()
        return full

    def _read(self, s: Source, r: Reader, batch: list[Alert], budget: int) -> int:
        """Parse r's complete lines into batch until it holds ``batch`` alerts or ``budget``
        bytes were read; returns the bytes read."""
        fmt = s.format_of(r)
        if fmt is None:
            return 0
        span = self._span_now() if fmt == "fast" else None
        start = r.read_at
        while len(batch) < self.batch and r.read_at - start < budget:
            item = r.next_line() or (r.final_line() if r is not s.current and self._quiet(r) else None)
            if item is None:
                break
            line, end = item
            offset, r.consumed = r.consumed, end
            self._count_too_long(s, r, offset)
            if line is None:                   # the end of an over-long line
                continue
            text = alert_formats.decode_line(line)
            try:
                alert = alert_formats.parse_line(fmt, text, span=span, stats=s.stats)
            except Exception as e:
                # AlertError is a bad line; anything else a parser bug, counted the same way: a
                # crash would restart the follower into the same line forever.
                s.bad(r, offset, str(e) if isinstance(e, AlertError) else f"{type(e).__name__}: {e}", text)
                continue
            if alert is None:
                s.stats.skipped += 1
            else:
                s.stats.read += 1
                batch.append(alert)
        self._count_too_long(s, r, r.consumed)  # one still without its newline
        return r.read_at - start

    @staticmethod
    def _count_too_long(s: Source, r: Reader, offset: int) -> None:
        while r.too_long:
            r.too_long -= 1
            s.bad(r, offset, f"line longer than {MAX_LINE} bytes")

    @staticmethod
    def _quiet(r: Reader) -> bool:
        return time.time() - os.fstat(r.fd).st_mtime >= ROTATED_QUIET

    def _close_quiet(self, s: Source) -> bool:
        """Close rotated files read to their end (or never followable) that nobody has written for
        a while."""
        done = [r for r in s.rotated if self._quiet(r)
                and (r.consumed == os.fstat(r.fd).st_size or s.format_of(r) is None)]
        for r in done:
            log.info("%s: finished the rotated file at byte %d", s.path, r.consumed)
            s.rotated.remove(r)
            r.close()
        return bool(done)

    def drain(self) -> None:
        """Import everything there is now (``--once``)."""
        while self.step():
            pass

    def run(self, poll_interval: float, stop: threading.Event) -> None:
        """Follow until ``stop`` is set, telling systemd we are ready and alive (watchdog)."""
        watchdog = service.watchdog_interval()
        last_ping = time.monotonic()
        service.notify(READY="1", STATUS=self.summary())
        while not stop.is_set():
            more = self.step()
            if watchdog and time.monotonic() - last_ping >= watchdog:
                last_ping = time.monotonic()
                service.notify(WATCHDOG="1", STATUS=self.summary())
            if not more:                       # wake for the next ping even if polls are rarer
                stop.wait(min(poll_interval, watchdog) if watchdog else poll_interval)
        service.notify(STOPPING="1", STATUS="stopping")

    def summary(self) -> str:
        bad = sum(s.stats.bad for s in self.sources)
        return (f"following {len(self.sources)} file(s): {self.totals.imported} alerts imported, "
                f"{self.totals.duplicates} already stored, {bad} bad lines")


@click.command("follow", context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Example:
  flowtap alerts follow -c /etc/flowtap/flowtap.toml      # the service (flowtap-alerts)
  flowtap alerts follow -c flowtap.toml -d /tmp/flowtap --once""")
@click.option("-c", "config_path", metavar="CONFIG", help="TOML config whose [alerts] files are "
              "followed (default /etc/flowtap/flowtap.toml).")
@click.option("-d", "archive_dir", metavar="ARCHIVE_DIR", help="Archive (or data) directory whose "
              "alert store gets the alerts (default archive.dir).")
@click.option("--state", "state_file", metavar="FILE", help="Position file (default alerts.state_file, "
              "else alerts/follow.json beside the archive directory).")
@click.option("--once", is_flag=True, help="Import what the files hold now and exit.")
def follow_command(config_path: str | None, archive_dir: str | None, state_file: str | None,
                   once: bool) -> None:
    """Follow growing IDS alert files (Suricata EVE, Snort alert_fast/alert_json) into the alert store.

    New complete lines are imported within a poll interval of their arrival; each file's position
    is kept across restarts, rotation and truncation. Stops cleanly on SIGTERM.
    """
    try:
        cfg = config_mod.load(config_path)
    except config_mod.ConfigError as e:
        click.echo(f"flowtap: config: {e}", err=True)
        raise click.exceptions.Exit(2)
    a = cfg.alerts
    store = alerts.store_dir(archive_dir or cfg.archive.dir)
    state = Path(state_file) if state_file else a.state_path(store)
    if once and not a.files:
        raise click.UsageError("nothing to follow: alerts.files is empty")
    service.setup_logging()
    if not a.files:
        log.info("no alert files configured (alerts.files): idle")
    stop = threading.Event()
    with Follower(a.files, store, state, a.format, a.batch) as follower:
        if once:
            follower.drain()
            for s in follower.sources:
                st = s.stats
                years = ", ".join(f"{y} ({how})" for y, how in sorted(st.years.items()))
                click.echo(f"{s.path}: alerts {st.read} skipped {st.skipped} bad {st.bad}"
                           + (f" year {years}" if years else ""))
                if st.first_bad:
                    click.echo(f"flowtap: {s.path}: byte {st.first_bad[0]}: {st.first_bad[1]}", err=True)
            t = follower.totals
            click.echo(f"{t.imported} alerts imported, {t.duplicates} already stored"
                       + (f", {t.rejected} rejected (time out of range)" if t.rejected else ""))
            if follower.store_error is not None:
                raise click.exceptions.Exit(1)
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        log.info("following %s into %s (positions in %s)", ", ".join(a.files) or "nothing", store, state)
        follower.run(a.poll_interval, stop)
        log.info("stopped: %s", follower.summary())
