"""Disk-full test (issue 3): the recorder on a small filesystem (an 8 MiB tmpfs; root only).

1. Quota: a capture of 48 one-minute periods (~15 MB of archives) recorded under a 2 MiB byte quota.
   A sampler thread adds up the archive files (database + WAL) every millisecond: they never exceed
   the quota by more than one period's archive, and at the end they are within the quota, the
   newest periods, each exactly what a clean run writes.
2. ENOSPC: the same capture without any quota, so that only a refused write makes the recorder
   free space. The recorder reads it from a FIFO that holds back its last 30% until the end, so it
   is still recording at every pause; the test pauses it (SIGSTOP) at chosen moments and
   a. fills the filesystem with a ballast file: the recorder logs an error naming the full disk,
      retention deletes the oldest closed archives, and recording goes on;
   b. keeps topping the ballast up until retention has nothing left to delete and the recorder must
      hold its records in memory, then removes the ballast: the recorder writes what it held and
      records to the end (exit status 0).
   Throughout, closed archives are never modified (hashed when they close, compared at every
   pause and at the end), and afterwards every archive left is closed, passes integrity_check,
   opens read-only and holds only the clean run's records, none twice; nothing else is left in
   the directory.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from appliance import archive
from test_crash import check_archive, generate, record, sha256

pytestmark = pytest.mark.slow

FS_BYTES = 8 << 20
QUOTA = 2 << 20
ROTATE_INTERVAL = 60
CAPTURE = dict(packets=400_000, sessions=40_000, arrivals_per_s=14)   # 48 minutes of packet time
HOLD_BACK = 0.3                   # the ENOSPC run gets the capture's last 30% only when it may end


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs, unmounted afterwards. Needs root: CI runs as root, so no skipping."""
    assert os.geteuid() == 0, "the disk-full test mounts a tmpfs and must run as root (CI does)"
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0755", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "-l", str(mnt)])      # leave nothing mounted, but fail
            raise AssertionError(f"{mnt} was busy: something still had a file open on it")


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("diskfull") / "capture.pcap"
    generate(path, [CAPTURE])
    return path


class Sampler(threading.Thread):
    """Watches an archive directory every millisecond: bytes used, the largest single archive, and
    a sha256 of every archive taken when it is first seen closed."""

    def __init__(self, directory: Path):
        super().__init__(daemon=True)
        self.dir = directory
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.max_total = self.max_single = self.samples = 0
        self.hashes: dict[str, str] = {}

    def sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return out
        for e in entries:
            base = e.name.removesuffix("-wal")
            if archive.NAME_RE.match(base):
                try:
                    out[base] = out.get(base, 0) + e.stat().st_size
                except FileNotFoundError:
                    pass
        return out

    def sample(self) -> None:
        sizes = self.sizes()
        with self.lock:
            self.samples += 1
            self.max_total = max(self.max_total, sum(sizes.values()))
            self.max_single = max([self.max_single, *sizes.values()])
            for name in sizes:
                if name not in self.hashes:
                    path = self.dir / name
                    try:
                        if archive.is_closed(path):
                            self.hashes[name] = sha256(path)
                    except FileNotFoundError:
                        pass

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(0.001)

    def closed(self) -> list[str]:
        """Closed archives present now, oldest first."""
        self.sample()
        return [p.name for p in archive.list_archives(self.dir) if p.name in self.hashes]

    def verify_closed_untouched(self) -> None:
        """Every archive hashed when it closed is unchanged (or deleted)."""
        with self.lock:
            hashes = dict(self.hashes)
        for name, digest in hashes.items():
            path = self.dir / name
            if path.exists():
                assert sha256(path) == digest, f"closed archive {name} was modified"


def write_config(path: Path, **archive_keys) -> Path:
    keys = dict(rotate_interval=ROTATE_INTERVAL, commit_interval=0.5, **archive_keys)
    path.write_text("[sensor]\nid = \"diskfull-test\"\n[archive]\n"
                    + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    return path


def reference_run(tmp_path: Path, capture: Path) -> dict[float, list[tuple]]:
    """Rows of each period's archive from a clean run on an ordinary disk."""
    cfg = write_config(tmp_path / "reference.toml", min_free_percent=0)
    proc = record(cfg, capture, tmp_path / "reference", tmp_path / "reference.log")
    assert proc.wait(timeout=120) == 0
    rows = {}
    for path in archive.list_archives(tmp_path / "reference" / "archive"):
        got = check_archive(path, tmp_path / "scratch")
        rows[got["info"]["period_start"]] = got["rows"]
    return rows


def check_directory(adir: Path, reference: dict[float, list[tuple]], scratch: Path) -> dict[str, dict]:
    """Every archive left: closed, intact, readable read-only, holding only reference records."""
    stray = [p.name for p in adir.iterdir()
             if not archive.NAME_RE.match(p.name) and p.name != archive.LOCK_NAME]
    assert not stray, f"left in the archive directory: {stray}"
    found = {}
    records: set[tuple] = set()
    everything = {r for rows in reference.values() for r in rows}
    for path in archive.list_archives(adir):
        assert archive.is_closed(path), f"{path.name} was left open"
        got = check_archive(path, scratch)
        assert not got["stillborn"], f"{path.name} is empty: a failed create was left behind"
        with closing(archive.open_readonly(path)) as conn:
            assert conn.execute("SELECT count(*) FROM flows").fetchone()[0] == len(got["rows"])
        assert got["info"]["state"] == "closed"
        assert got["info"]["records"] == len(got["rows"])
        rows = set(got["rows"])
        assert rows <= everything, f"{path.name} holds records the clean run has not"
        assert not rows & records and len(rows) == len(got["rows"]), f"{path.name}: records twice"
        records |= rows
        found[path.name] = got
    return found


def fill(path: Path) -> int:
    """Grow a ballast file until the filesystem refuses (ENOSPC); returns the bytes it added."""
    added = 0
    with open(path, "ab", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            block = b"\xba" * chunk
            while True:
                try:
                    n = f.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
                added += n
                if n < chunk:
                    break
    return added


def logged(text: str, what: str) -> list[str]:
    """Archive names in the recorder's log lines saying ``what`` (e.g. "retention deleted")."""
    return [line.split()[-1] for line in text.splitlines() if f"INFO: {what} " in line]


def period_of(name: str) -> float:
    """The period of the time an archive was opened at, from its name."""
    m = archive.NAME_RE.match(name)
    assert m, name
    stamp = datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    return archive.period_start(stamp, ROTATE_INTERVAL)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_quota_holds_on_a_small_filesystem(tmp_path, small_fs, capture):
    reference = reference_run(tmp_path, capture)
    assert len(reference) >= 40
    cfg = write_config(tmp_path / "quota.toml", quota_bytes=QUOTA, min_free_percent=0)
    adir = small_fs / "data" / "archive"
    log = tmp_path / "quota.log"
    sampler = Sampler(adir)
    sampler.start()
    try:
        proc = record(cfg, capture, small_fs / "data", log)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        sampler.stop.set()
        sampler.join()
    text = log.read_text()
    assert "ERROR" not in text, text[-3000:]
    found = check_directory(adir, reference, tmp_path / "scratch")
    sampler.verify_closed_untouched()
    used = sum(p.stat().st_size for p in adir.iterdir())
    print(f"\nquota test: quota {QUOTA:,} bytes on a {FS_BYTES:,}-byte tmpfs; {len(reference)} archives "
          f"written, {len(found)} kept ({used:,} bytes); at most {sampler.max_total:,} bytes in use "
          f"(quota + {sampler.max_total - QUOTA:,}), largest archive {sampler.max_single:,} bytes; "
          f"{sampler.samples:,} samples")
    assert sampler.samples > 100
    assert sampler.max_total <= QUOTA + sampler.max_single, "the quota was exceeded by more than a period"
    assert used <= QUOTA
    assert logged(text, "opened archive") == [archive.archive_name(p) for p in sorted(reference)]
    assert len(found) >= 3
    # Retention took the oldest: what is left are the last periods, each complete.
    periods = sorted(reference)
    kept = [got["info"]["period_start"] for got in found.values()]
    assert kept == periods[-len(kept):]
    for got in found.values():
        assert got["rows"] == reference[got["info"]["period_start"]]


class Feeder(threading.Thread):
    """Writes a capture into a FIFO that the recorder reads (``-r FIFO``), holding its last part
    back until ``release`` is set: however fast the recorder, it cannot reach the end of the capture
    while the test still needs it recording."""

    def __init__(self, capture: Path, fifo: Path, hold_back: float):
        super().__init__(daemon=True)
        self.capture, self.fifo = capture, fifo
        self.hold_at = int(capture.stat().st_size * (1 - hold_back))
        self.release = threading.Event()
        os.mkfifo(fifo)

    def run(self) -> None:
        try:
            with open(self.capture, "rb") as src, open(self.fifo, "wb") as dst:
                sent = 0
                while chunk := src.read(1 << 16):
                    if sent >= self.hold_at:
                        self.release.wait()
                    dst.write(chunk)
                    sent += len(chunk)
        except BrokenPipeError:
            pass                          # the recorder was killed: the test reports why


def test_enospc_is_survived(tmp_path, small_fs, capture):
    reference = reference_run(tmp_path, capture)
    # No quota at all: only the disk refusing a write (ENOSPC) makes the recorder free space.
    cfg = write_config(tmp_path / "enospc.toml", min_free_percent=0)
    adir = small_fs / "data" / "archive"
    ballast = small_fs / "ballast"
    log = tmp_path / "enospc.log"
    sampler = Sampler(adir)
    sampler.start()
    feeder = Feeder(capture, tmp_path / "capture.fifo", HOLD_BACK)
    feeder.start()
    proc = record(cfg, feeder.fifo, small_fs / "data", log)
    errors = lambda: log.read_text().count("ERROR")        # noqa: E731
    key = lambda name: archive._sort_key(Path(name))       # noqa: E731
    try:
        # a. Once a few archives are closed, the disk fills up under the recorder.
        wait_for(lambda: len(sampler.closed()) >= 6 or proc.poll() is not None, 30, "6 closed archives")
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None, "the recorder finished too early"
        sampler.verify_closed_untouched()
        before_full = sampler.closed()
        fill(ballast)
        assert os.statvfs(small_fs).f_bavail == 0
        proc.send_signal(signal.SIGCONT)
        wait_for(lambda: errors() > 0, 30, "the recorder to report the full disk")
        newer = lambda: [n for n in sampler.closed() if key(n) > key(before_full[-1])]   # noqa: E731
        wait_for(lambda: len(newer()) >= 3, 30, "three more archives closed after the disk filled up")
        proc.send_signal(signal.SIGSTOP)
        sampler.verify_closed_untouched()
        closed_after_full = newer()
        deleted_a = [n for n in before_full if not (adir / n).exists()]
        assert deleted_a == before_full[:len(deleted_a)] and deleted_a, "retention freed no space"
        errors_a = errors()

        # b. Something keeps eating every byte freed: retention deletes every closed archive, then
        # the recorder can only hold records in memory until the ballast goes away.
        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 20
        while sampler.closed() or errors() < errors_a + 3:
            assert time.monotonic() < deadline, "retention did not run out of archives to delete"
            fill(ballast)
            time.sleep(0.002)
        fill(ballast)
        time.sleep(0.2)                      # stuck: nothing left to delete, records queue up
        proc.send_signal(signal.SIGSTOP)
        sampler.verify_closed_untouched()
        errors_b = errors()
        held = int(log.read_text().rsplit("keeping ", 1)[1].split()[0])
        assert held > 0
        ballast.unlink()
        feeder.release.set()
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        feeder.release.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        sampler.stop.set()
        sampler.join()
        ballast.unlink(missing_ok=True)

    text = log.read_text()
    disk_errors = [line for line in text.splitlines() if "ERROR" in line]
    assert disk_errors and all("disk" in line and "full" in line for line in disk_errors[:1]), disk_errors[:3]
    assert "records not written" not in text
    sampler.verify_closed_untouched()
    found = check_directory(adir, reference, tmp_path / "scratch")
    # Retention deleted oldest first, and only archives older than every one kept.
    deleted = logged(text, "retention deleted")
    assert deleted == sorted(deleted, key=key) and len(set(deleted)) == len(deleted)
    assert set(deleted) == set(logged(text, "opened archive")) - set(found)
    assert max(map(key, deleted)) < min(map(key, found)), "a newer archive went before an older one"
    # After the ballast went away the recorder went on to the end of the capture, and nothing it
    # held in memory while stuck was lost: every record of every period after the newest one
    # retention deleted is in the archives left.
    periods = sorted(reference)
    assert max(got["info"]["period_start"] for got in found.values()) == periods[-1]
    newest_deleted = max(period_of(n) for n in deleted)
    expected = {r for p in periods if p > newest_deleted for r in reference[p]}
    kept_rows = {r for got in found.values() for r in got["rows"]}
    missing = expected - kept_rows
    # Records the recorder held while it could not rotate end up in the archive it wrote them to,
    # not in their own period's (reported, not asserted: see the issue 3 report).
    period_of_row = {r: p for p, rows in reference.items() for r in rows}
    elsewhere = sum(period_of_row[r] != got["info"]["period_start"]
                    for got in found.values() for r in got["rows"])
    print(f"\nENOSPC test: {len(logged(text, 'opened archive'))} archives written; ballast filled the "
          f"disk after {len(before_full)} closed, {errors_a} errors logged, {len(deleted_a)} deleted by retention, "
          f"{len(closed_after_full)} closed after; stuck phase: {errors_b - errors_a} more errors, "
          f"{held:,} records held in memory when the ballast went; "
          f"{len(found)} archives kept, {len(deleted)} deleted; "
          f"{len(kept_rows):,} records kept, {len(missing):,} missing from the periods after the newest "
          f"deleted one, {elsewhere:,} in another period's archive; first error: {disk_errors[0]}")
    assert not missing, f"{len(missing)} records lost"
