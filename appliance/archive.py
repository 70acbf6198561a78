"""Rotating SQLite archives: the only writer, rotation, retention and crash recovery.

One self-describing file per rotation period (``flows-YYYYMMDDTHHMMSSZ.sqlite``, UTC) holding
``flows``, ``sensor_status`` and ``archive_info``. The open archive is in WAL mode and takes one
transaction per batch; on rotation it is checkpointed, switched to ``journal_mode=DELETE``, given
its host and port indexes, marked closed and made read-only, so readers can open it with
``immutable=1`` and downloads can copy it.

Records from the meter reach the file without becoming Python objects: ``capture.ArchiveStore``
(native/store.c, a second connection) binds the drained structs. Schema, ``archive_info``, sensor
status rows and records given as dicts go through the Python connection.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from . import record as _record
from .capture import RECORD_SIZE, ArchiveStore
from .config import ArchiveConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^flows-(\d{8}T\d{6}Z)(?:-(\d+))?\.sqlite$")

# The flows table: the stored columns of appliance/record.py (Argus field names, fields.py's labels).
FLOW_COLUMNS: tuple[tuple[str, str], ...] = tuple((c.name, c.sql) for c in _record.STORED)
FLOW_NAMES = tuple(name for name, _ in FLOW_COLUMNS)
# Totals are not stored: readers derive them (query.py).
DERIVED: dict[str, str] = dict(_record.DERIVED)

STATUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "REAL"), ("interval", "REAL"), ("interface", "TEXT"), ("packets", "INTEGER"),
    ("bytes", "INTEGER"), ("kernel_drops", "INTEGER"), ("interface_drops", "INTEGER"),
    ("decode_errors", "TEXT"), ("flows_active", "INTEGER"), ("flows_created", "INTEGER"),
    ("flows_ended", "INTEGER"), ("flows_evicted", "INTEGER"), ("table_capacity", "INTEGER"),
    ("occupancy", "REAL"), ("gap_acks", "INTEGER"), ("records", "INTEGER"),
    ("clock_synced", "INTEGER"),
)

# Indexes for the analyst's common questions. The time index grows in order, so it is kept while
# the archive is open; the host and port indexes would take random inserts that cost more than the
# records themselves (bench/RESULTS.md), so they are built in one sorted pass when it closes.
OPEN_INDEXES = (("flows_stime", "flows(stime)"),)
CLOSE_INDEXES = (
    ("flows_saddr", "flows(saddr, stime)"),
    ("flows_daddr", "flows(daddr, stime)"),
    ("flows_dport", "flows(dport, stime)"),
)


class ArchiveError(Exception):
    """An archive could not be written or is not a flowtap archive."""


LAST_NAMEABLE = 253_402_300_799.0   # 9999-12-31T23:59:59Z: captures can carry absurd timestamps


def archive_name(t: float, suffix: int = 0) -> str:
    """File name of an archive opened at Unix time t (clamped to years 1970-9999)."""
    t = min(max(t, 0.0), LAST_NAMEABLE)
    stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"flows-{stamp}{f'-{suffix}' if suffix else ''}.sqlite"


def period_start(t: float, interval: int) -> float:
    """Start of the UTC-aligned rotation period holding t."""
    return t - (t % interval)


def list_archives(directory: str | os.PathLike[str]) -> list[Path]:
    """Archive files in a directory, oldest first (names sort by time). Only regular files: a link
    named like an archive (planted by whoever can write the directory) is never listed, read,
    served or deleted."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if NAME_RE.match(p.name) and is_regular_file(p)), key=_sort_key)


def is_regular_file(p: Path) -> bool:
    """A regular file itself, not a link to one (nor anything else)."""
    try:
        return stat.S_ISREG(p.lstat().st_mode)
    except OSError:
        return False


def _sort_key(p: Path) -> tuple[str, int]:
    m = NAME_RE.match(p.name)
    assert m
    return m.group(1), int(m.group(2) or 0)


def is_closed(path: Path) -> bool:
    """Closed archives are read-only files (the writer drops the write bits when it closes one)."""
    return not (path.stat().st_mode & 0o222)


def read_info(conn: sqlite3.Connection) -> dict[str, Any]:
    """archive_info as a dict (values decoded from JSON)."""
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM archive_info")}


def _create_schema(conn: sqlite3.Connection) -> None:
    cols = ", ".join(f"{n} {t}" for n, t in FLOW_COLUMNS)
    conn.execute(f"CREATE TABLE flows ({cols})")
    cols = ", ".join(f"{n} {t}" for n, t in STATUS_COLUMNS)
    conn.execute(f"CREATE TABLE sensor_status ({cols})")
    conn.execute("CREATE TABLE archive_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for name, target in OPEN_INDEXES:
        conn.execute(f"CREATE INDEX {name} ON {target}")


def _set_info(conn: sqlite3.Connection, **values: Any) -> None:
    conn.executemany("INSERT OR REPLACE INTO archive_info (key, value) VALUES (?, ?)",
                     [(k, json.dumps(v)) for k, v in values.items()])


def _summarise(conn: sqlite3.Connection) -> dict[str, Any]:
    """The contents-derived part of archive_info."""
    n, first, last, max_dur = conn.execute(
        "SELECT count(*), min(stime), max(ltime), max(ltime - stime) FROM flows").fetchone()
    rows, drops, synced = conn.execute(
        "SELECT count(*), coalesce(sum(kernel_drops), 0) + coalesce(sum(interface_drops), 0),"
        " min(clock_synced) FROM sensor_status").fetchone()
    # max_dur bounds how early a record overlapping a -t range can start (query.py uses it).
    return {"records": n, "first_stime": first, "last_ltime": last, "max_dur": max_dur,
            "status_rows": rows,
            "drops": drops, "clock_synced": bool(synced) if synced is not None else None}


def set_aside(path: Path) -> None:
    """Close a damaged archive as it is: what its WAL holds is moved into the file where SQLite
    still can, and it is made read-only (closed: never written again). Its indexes and summary
    are not built; readers read around the damage (``query.scan``)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode = DELETE")
            try:                        # where archive_info's page is sound: say so there too
                _set_info(conn, state="damaged", closed_at=time.time())
            except sqlite3.Error as e:
                log.warning("archive %s: archive_info not updated (%s)", path.name, e)
        finally:
            conn.close()
    except sqlite3.Error as e:
        log.error("archive %s: its write-ahead log could not be moved into it (%s); %s-wal keeps "
                  "those records", path.name, e, path.name)
    try:
        os.chmod(path, 0o444)
    except OSError as e:
        log.error("archive %s could not be made read-only: %s", path.name, e)
    log.error("archive %s is damaged: closed as it is, read-only (flowtap ra reads around the "
              "damage)", path.name)


def close_archive(path: Path, state: str = "closed") -> None:
    """Checkpoint, leave WAL mode, build the host and port indexes, record the summary and make
    the file read-only.

    Also used by recovery: opening the file replays a WAL left by a crash.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("BEGIN IMMEDIATE")
        for name, target in CLOSE_INDEXES:
            conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")
        _set_info(conn, **_summarise(conn), state=state, closed_at=time.time())
        conn.execute("COMMIT")
    finally:
        conn.close()
    os.chmod(path, 0o444)


class _Closing:
    """An archive being closed (close_archive) on a thread of its own, started at once; the writer
    reaps it, and an error is handed over, not raised there."""

    def __init__(self, path: Path):
        self.path = path
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"close {path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            close_archive(self.path)
        except BaseException as exc:           # noqa: BLE001  the writer's thread deals with it
            self.error = exc


@dataclass
class OpenArchive:
    """The archive being written."""

    path: Path
    conn: sqlite3.Connection         # schema, archive_info, status rows and records given as dicts
    store: ArchiveStore              # records from the meter, bound in C (its own connection)
    period: float
    records: int = 0                 # records committed to it so far

    def close(self) -> None:
        self.store.close()
        self.conn.close()


LOCK_NAME = ".writer.lock"     # in the archive directory: flock'ed by the one writer, holds its pid


def _lock_directory(directory: Path) -> int:
    """Take the directory's writer lock (an flock, so a killed writer leaves none behind); returns
    the fd that holds it. A second recorder on the same directory would take the first one's open
    archive for a crash's leftover and close it under it.

    :raises ArchiveError: another process holds the lock (its pid is in the message).
    """
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ArchiveError(f"{directory} is being written by another recorder (pid {holder}): "
                           f"one recorder per archive directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class ArchiveWriter:
    """The one writer of a directory of archives (it holds the directory's lock until closed).

    :param cfg: rotation, size cap, retention and commit interval.
    :param sensor_id: recorded in every archive (Argus ``srcid``).
    :param interface: what is being recorded (interfaces or capture files).
    :param config_digest: :meth:`Config.digest` of the running configuration.

    Example::

        with ArchiveWriter(cfg.archive, "tap1", "br0", cfg.digest()) as w:
            w.add(records, now=time.time())
    """

    INSERT_BATCH = 5000        # records buffered beyond this are committed at once
    BUFFER_LIMIT = 1_000_000   # records held in memory while the disk refuses writes

    def __init__(self, cfg: ArchiveConfig, sensor_id: str, interface: str, config_digest: str):
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.sensor_id = sensor_id
        self.interface = interface
        self.config_digest = config_digest
        self.current: OpenArchive | None = None
        self.packed: list[bytes] = []    # batches of packed records, as the meter drains them
        self.rows: list[tuple] = []      # rows of records given as dicts
        self.queued = 0                  # records in both
        self.status_pending: list[tuple] = []
        self.last_commit = time.monotonic()
        self.clock = 0.0                 # the recorder clock of the last add()
        self.records_written = 0
        self.records_lost = 0
        self.write_errors = 0
        self.last_error = ""
        self.failing = False             # the last write failed: retry once per commit interval
        self.unclosed: list[Path] = []   # archives whose closing failed: tried again after a commit
        self.closing: _Closing | None = None   # the last archive rotated out, closed on a thread
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock_directory(self.dir)
        self._insert = (f"INSERT INTO flows ({', '.join(FLOW_NAMES)}) "
                        f"VALUES ({', '.join('?' * len(FLOW_NAMES))})")
        self._insert_status = (f"INSERT INTO sensor_status ({', '.join(n for n, _ in STATUS_COLUMNS)})"
                               f" VALUES ({', '.join('?' * len(STATUS_COLUMNS))})")

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recovery ---------------------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Close every archive a crash left open (replaying its WAL); returns those recovered.

        Also finishes what a crash interrupted around an archive's life: one killed while being
        created (no schema yet, so no records) is removed, and one killed between being marked
        closed and being made read-only is made read-only.
        """
        recovered = []
        for path in list_archives(self.dir):
            if not is_closed(path) and path != (self.current and self.current.path):
                try:
                    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
                    try:
                        tables = {name for (name,) in conn.execute(
                            "SELECT name FROM sqlite_master WHERE type = 'table'")}
                        state = read_info(conn).get("state") if tables else None
                    finally:
                        conn.close()
                except sqlite3.DatabaseError as exc:
                    log.error("archive %s is unreadable, left as it is: %s", path, exc)
                    continue
                if not tables:
                    _unlink_archive(path)
                    log.warning("removed %s: a crash left it empty while it was being created", path.name)
                elif state == "open":
                    try:
                        close_archive(path, state="recovered")
                    except sqlite3.DatabaseError as exc:
                        if not is_damage(exc):
                            raise
                        set_aside(path)         # a damaged archive must not stop the recorder
                        continue
                    log.warning("recovered archive %s left open by a crash", path.name)
                    recovered.append(path)
                elif state in ("closed", "recovered"):
                    os.chmod(path, 0o444)
                    log.warning("made %s read-only: a crash came between closing it and that", path.name)
        return recovered

    # -- writing ----------------------------------------------------------------------------------

    def _open(self, now: float) -> OpenArchive:
        period = period_start(now, self.cfg.rotate_interval)
        suffix = 0
        while (self.dir / archive_name(now if suffix else period, suffix)).exists():
            suffix += 1
        path = self.dir / archive_name(now if suffix else period, suffix)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")      # a commit survives a power cut (store.c)
            conn.execute("BEGIN")
            _create_schema(conn)
            _set_info(conn, schema_version=SCHEMA_VERSION, sensor_id=self.sensor_id,
                      interface=self.interface, config_digest=self.config_digest, opened_at=time.time(),
                      period_start=period, period_seconds=self.cfg.rotate_interval, state="open",
                      flowtap_version=__version__)
            conn.execute("COMMIT")
            store = ArchiveStore(path, self.sensor_id)
        except BaseException:
            conn.close()                # no record was written: nothing in the file to keep
            _unlink_archive(path)
            raise
        log.info("opened archive %s", path.name)
        return OpenArchive(path, conn, store, period)

    def add_packed(self, packed: bytes, now: float) -> None:
        """Queue records that ended by ``now``, packed as the meter drains them (concatenated
        sensor_flow_t, ``Capture.drain_packed``); commits when the commit interval has passed or
        the batch is large, and rotates first when ``now`` has entered a new period.

        :param now: the recorder's clock (packet time for files; max(packet, wall clock) live).
        """
        self.rotate_if_due(now)
        if packed:
            self.packed.append(packed)
            self.queued += len(packed) // RECORD_SIZE
        self._queued(now)

    def tick(self, now: float) -> None:
        """The recorder's loop with no record to add: rotate when due, and commit what waits
        (records, status rows) once the commit interval has passed, so a quiet link's last
        records reach the disk within one interval."""
        self.rotate_if_due(now)
        if self.queued or self.status_pending:
            self._queued(now)

    def add(self, records: Iterable[dict[str, Any]], now: float) -> None:
        """Like :meth:`add_packed` for records as dicts (tools and tests; slower)."""
        self.rotate_if_due(now)
        names = FLOW_NAMES
        rows = [tuple(r[n] for n in names) for r in records]
        self.rows.extend(rows)
        self.queued += len(rows)
        self._queued(now)

    def _queued(self, now: float) -> None:
        self.clock = now
        due = time.monotonic() - self.last_commit >= self.cfg.commit_interval
        if due or (self.queued >= self.INSERT_BATCH and not self.failing):
            self.commit(now)

    def add_status(self, row: dict[str, Any]) -> None:
        """Queue one sensor status row (written with the next commit)."""
        row = dict(row, decode_errors=json.dumps(row.get("decode_errors", {})))
        self.status_pending.append(tuple(row.get(n) for n, _ in STATUS_COLUMNS))

    def commit(self, now: float) -> None:
        """Write everything queued: the meter's records in one transaction (ArchiveStore), then
        status rows and records given as dicts in another. On a full or failing disk: log, free
        space by retention, keep what was not written queued (up to BUFFER_LIMIT) and try again
        next time."""
        self.last_commit = time.monotonic()
        self._reap()
        if not self.queued and not self.status_pending:
            return
        try:
            if self.current is None:
                self.current = self._open(now)
            cur = self.current
            cut = time.time()            # everything queued before this instant is in this commit
            if self.packed:
                packed = b"".join(self.packed)
                n = len(packed) // RECORD_SIZE
                store = cur.store
                store.execute("BEGIN IMMEDIATE")
                store.insert(packed)
                store.set_info("records", json.dumps(cur.records + n))
                store.set_info("last_commit_at", json.dumps(cut))
                store.execute("COMMIT")
                self._written(cur, n)
                self.packed.clear()
            if self.rows or self.status_pending:
                n = len(self.rows)
                cur.conn.execute("BEGIN")
                cur.conn.executemany(self._insert, self.rows)
                cur.conn.executemany(self._insert_status, self.status_pending)
                _set_info(cur.conn, records=cur.records + n, last_commit_at=cut)
                cur.conn.execute("COMMIT")
                self._written(cur, n)
                self.rows.clear()
                self.status_pending.clear()
        except (sqlite3.OperationalError, OSError) as exc:
            self._write_failed(exc)
            return
        self.failing = False
        self.enforce_retention()
        for path in list(self.unclosed):
            self._close(path)
        if self.current and self.current.path.stat().st_size >= self.cfg.size_cap:
            self.rotate(now, background=True)

    def _written(self, cur: OpenArchive, n: int) -> None:
        cur.records += n
        self.records_written += n
        self.queued -= n

    def _write_failed(self, exc: Exception) -> None:
        """A commit failed. A full disk or an I/O error: free space by retention. A damaged open
        archive: set it aside, and the queued records go to a new one. Anything else (a lock, a
        file made read-only): only wait, and delete nothing. In each case what is queued stays
        queued (up to BUFFER_LIMIT) for the next commit."""
        self.write_errors += 1
        self.failing = True
        self.last_error = str(exc)
        damaged = isinstance(exc, sqlite3.Error) and is_damage(exc)
        if self._disk_full(exc):
            log.error("disk full: cannot write archives in %s (%s); deleting the oldest archives "
                      "to make room and keeping %d records queued", self.dir, exc, self.queued)
        elif is_io_error(exc):
            log.error("archive write failed (%s); freeing space and keeping %d records queued",
                      exc, self.queued)
        elif not damaged:
            log.error("archive write failed (%s); keeping %d records queued and trying again",
                      exc, self.queued)
        if self.current is not None:
            for rollback in (self.current.store.execute, self.current.conn.execute):
                try:
                    rollback("ROLLBACK")
                except sqlite3.Error:
                    pass            # no transaction was open on that connection
        if damaged and self.current is not None:
            self._set_aside(self.current, exc)
        elif is_disk_full(exc) or is_io_error(exc):
            self.enforce_retention(emergency=True)
        if self.queued > self.BUFFER_LIMIT:
            dropped = self._drop_oldest(self.queued - self.BUFFER_LIMIT)
            self.records_lost += dropped
            log.error("dropped %d records: the disk has refused writes for too long", dropped)

    def _disk_full(self, exc: BaseException) -> bool:
        """The disk is full: said so, or an I/O error with no byte free (a checkpoint or WAL
        truncate that meets ENOSPC can surface as SQLite's plain "disk I/O error")."""
        if is_disk_full(exc):
            return True
        try:
            return is_io_error(exc) and shutil.disk_usage(self.dir).free == 0
        except OSError:
            return False

    def _set_aside(self, cur: OpenArchive, exc: Exception) -> None:
        """Stop writing a damaged open archive (``set_aside``); the next commit opens a new
        archive for the same period."""
        log.error("archive %s is damaged (%s): recording goes on in a new archive with the %d "
                  "records queued", cur.path.name, exc, self.queued)
        self.current = None
        cur.close()
        set_aside(cur.path)

    def _drop_oldest(self, n: int) -> int:
        """Forget the n oldest queued records (whole batches, the last one cut); returns n."""
        left = n
        while left and self.packed:
            k = len(self.packed[0]) // RECORD_SIZE
            if k <= left:
                self.packed.pop(0)
                left -= k
            else:
                self.packed[0] = self.packed[0][left * RECORD_SIZE:]
                left = 0
        del self.rows[:left]
        self.queued -= n
        return n

    def rotate_if_due(self, now: float) -> None:
        """Close the period's archive once the clock has left its period. Queued records belong to
        the period of the clock when they were queued, so they are written there first."""
        period = self.current.period if self.current else (
            period_start(self.clock, self.cfg.rotate_interval) if self.queued else None)
        if period is None or period_start(now, self.cfg.rotate_interval) == period:
            return
        if self.queued or self.status_pending:
            self.commit(self.clock)
        self.rotate(self.clock, background=True)

    def rotate(self, now: float, background: bool = False) -> None:
        """Commit, close the open archive and apply retention; the next commit opens a new one.

        :param background: close it on a thread (the recorder's rotations): building its indexes
            takes seconds for a busy hour, and the recorder goes on reading its capture meanwhile.
            Retention follows when the close is reaped; a failed close is retried here.
        """
        if self.current is None:
            return
        if self.queued or self.status_pending:
            cur = self.current
            self.commit(now)
            if self.current is not cur or self.queued:
                return                      # commit rotated already, or the disk is refusing writes
        cur, self.current = self.current, None
        cur.close()
        self._reap(wait=True)               # one close at a time, oldest first
        if background:
            self.closing = _Closing(cur.path)
            return
        self._close(cur.path)
        self.enforce_retention()

    def _reap(self, wait: bool = False) -> None:
        """Finish a background close once its thread is done (or wait for it): retention then, or
        the close again here, with the full-disk handling of :meth:`_close`."""
        closing = self.closing
        if closing is None or (closing.thread.is_alive() and not wait):
            return
        closing.thread.join()
        self.closing = None
        if closing.error is None:
            log.info("closed archive %s", closing.path.name)
        else:
            log.warning("closing %s on its thread failed (%s); closing it again", closing.path.name,
                        closing.error)
            self._close(closing.path)
        self.enforce_retention()

    def _close(self, path: Path) -> bool:
        """Close an archive; on a full disk free space by retention and try once more. One that still
        cannot be closed stays open (in WAL mode) and is tried again after the next commit."""
        for attempt in (1, 2):
            try:
                close_archive(path)
            except (sqlite3.Error, OSError) as exc:
                full = self._disk_full(exc)
                if attempt == 1 and full and self.enforce_retention(emergency=True, keep=path):
                    continue
                log.error("closing %s failed (%s%s); trying again after the next write", path.name, exc,
                          ": the disk is full" if full else "")
                if path not in self.unclosed:
                    self.unclosed.append(path)
                return False
            log.info("closed archive %s", path.name)
            if path in self.unclosed:
                self.unclosed.remove(path)
            return True
        return False

    def close(self, now: float | None = None) -> None:
        """Write what is queued and close the open archive (recorder shutdown). Records the disk
        still refuses are counted in ``records_lost``; an archive that cannot be closed is left for
        recovery on the next start."""
        now = time.time() if now is None else now
        self._reap(wait=True)
        if self.queued or self.status_pending:
            self.commit(now)
        self.rotate(now)
        if self.queued or self.status_pending:
            self.records_lost += self.queued
            log.error("stopping with %d records not written: %s", self.queued, self.last_error)
            self._drop_oldest(self.queued)
            self.status_pending.clear()
            self.rotate(now)
        for path in list(self.unclosed):
            self._close(path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)              # releases the directory for the next writer
            self._lock_fd = None

    # -- retention --------------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        """Bytes used by archives, filesystem size and free bytes, and the oldest record kept."""
        files = list_archives(self.dir)
        used = sum(_size(p) for p in files)
        fs = shutil.disk_usage(self.dir)
        return {"archive_bytes": used, "archives": len(files), "fs_bytes": fs.total,
                "fs_free": fs.free, "oldest": files[0].name if files else None}

    def _over_quota(self) -> bool:
        cfg = self.cfg
        fs = shutil.disk_usage(self.dir)
        if cfg.min_free_percent and fs.free * 100.0 < cfg.min_free_percent * fs.total:
            return True
        if cfg.quota_bytes and (sum(_size(p) for p in list_archives(self.dir))
                                + _alert_bytes(self.dir)) > cfg.quota_bytes:
            return True
        return False

    def enforce_retention(self, emergency: bool = False, keep: Path | None = None) -> list[Path]:
        """Delete the oldest archives no longer written (closed, or whose closing failed) while over
        quota or older than max_age.

        With emergency (the disk refused a write) at least one goes, and more until the free space
        would take the archives still to be written or closed once more (``keep``, the open one and
        those whose closing failed): room to checkpoint them and to go on writing.
        """
        removed = []
        busy = {p for p in (keep, self.current and self.current.path) if p}
        done = [p for p in list_archives(self.dir)
                if p not in busy and (is_closed(p) or p in self.unclosed)]
        horizon = time.time() - self.cfg.max_age if self.cfg.max_age else None
        for path in done:
            expired = horizon is not None and path.stat().st_mtime < horizon
            if not (expired or self._over_quota()
                    or (emergency and (not removed or self._short_of_room(busy)))):
                break
            try:
                _unlink_archive(path)
            except OSError as exc:
                log.error("retention could not delete %s: %s", path, exc)
                break
            if path in self.unclosed:
                self.unclosed.remove(path)
            removed.append(path)
            log.info("retention deleted %s", path.name)
        if removed:
            self._prune_alerts()
        return removed

    def _prune_alerts(self) -> None:
        """Alerts go with the last archive of their hour (``alerts.prune``)."""
        from . import alerts

        left = list_archives(self.dir)
        m = NAME_RE.match(left[0].name) if left else None
        if m is None:
            return
        oldest = datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        for path in alerts.prune(self.dir, oldest.timestamp()):
            log.info("retention deleted %s", path.name)

    def _short_of_room(self, busy: set[Path]) -> bool:
        need = sum(_size(p) for p in busy | set(self.unclosed))
        return shutil.disk_usage(self.dir).free < need


def _unlink_archive(path: Path) -> None:
    """Delete an archive with its WAL, shared-memory index and rollback journal."""
    for extra in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        extra.unlink(missing_ok=True)


def _alert_bytes(directory: Path) -> int:
    """Bytes of the alert files beside the archives (they count against the quota too)."""
    from . import alerts

    return sum(_size(p) for p in alerts.alert_files(directory))


def _size(p: Path) -> int:
    total = 0
    for extra in (p, Path(f"{p}-wal")):
        try:
            total += extra.stat().st_size
        except FileNotFoundError:
            pass
    return total


def is_io_error(exc: BaseException) -> bool:
    """True for an I/O error from the disk (EIO; SQLite's "disk I/O error" carries the errno when
    the OS gave one)."""
    return getattr(exc, "errno", None) == errno.EIO or "disk I/O error" in str(exc)


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's and the OS's ways of saying the disk is full (ArchiveStore's errors carry
    the OS errno behind SQLite's "disk I/O error")."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "full" in str(exc).lower()


SQLITE_CORRUPT = 11      # sqlite3.h: the primary result code for a damaged page


def is_damage(e: sqlite3.Error) -> bool:
    """True if SQLite finds the file damaged (not busy, interrupted, full, not a database, ...),
    or a record's text is not UTF-8 (the sqlite3 module's own error: the record's bytes are
    garbage)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == SQLITE_CORRUPT
    return str(e).startswith("Could not decode to UTF-8")


def readonly_uri(path: Path) -> str:
    """The SQLite URI that opens an archive read-only: closed archives as immutable (but not one
    set aside damaged with its WAL still beside it: the WAL holds records)."""
    immutable = is_closed(path) and not Path(f"{path}-wal").exists()
    return f"file:{path.resolve()}?mode=ro{'&immutable=1' if immutable else ''}"


def open_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open an archive for reading only: closed archives as immutable, the open one in WAL."""
    p = Path(path)
    conn = sqlite3.connect(readonly_uri(p), uri=True)
    try:
        conn.execute("SELECT 1 FROM archive_info LIMIT 1")
    except sqlite3.DatabaseError as exc:
        conn.close()
        what = "damaged archive" if is_damage(exc) else "not a flowtap archive"
        raise ArchiveError(f"{p}: {what} ({exc})") from None
    return conn
