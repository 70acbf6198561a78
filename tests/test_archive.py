"""Archives: what the recorder writes equals what the meter produced; rotation, retention, recovery."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance import archive, capture, config, query, recorder
from appliance.archive import ArchiveWriter, FLOW_NAMES
from conftest import damage_page

CAPTURES = ["large/pcpp-example.pcap", "large/pcpp-many-protocols.pcap", "large/nfstream-tor.pcapng",
            "tcp/nfstream-dnp3-long.pcapng", "fragments/pcpp-ip4_fragments.pcap",
            "linktypes/pcpp-many_interfaces.pcapng"]


def make_config(tmp_path: Path, **archive_kw) -> config.Config:
    cfg = config.Config(sensor=config.SensorConfig(id="test-sensor"))
    return dataclasses.replace(cfg, archive=dataclasses.replace(cfg.archive, dir=str(tmp_path / "archive"),
                                                                **archive_kw))


def archived_records(directory: Path) -> list[dict]:
    """Every record of a directory of archives, read the way `flowtap ra -r DIR` reads them."""
    return list(query.read_records(directory))


def stored(rec: dict) -> tuple:
    """A record as stored, less its sequence number (which follows the order records are drained)."""
    return tuple(rec[n] for n in FLOW_NAMES if n != "seq")


@pytest.mark.parametrize("name", CAPTURES)
def test_archive_holds_exactly_what_the_meter_produced(tmp_path, pcaps_dir, name):
    cfg = make_config(tmp_path)
    path = str(pcaps_dir / name)
    assert recorder.Recorder(cfg).record_files([path]) == []
    metered = [stored(r) for r in capture.meter_file(path, cfg)]
    archived = [stored(r) for r in archived_records(Path(cfg.archive.dir))]
    assert sorted(archived, key=repr) == sorted(metered, key=repr)
    assert len(archived) == len(metered) > 0


def _rows_with_types(directory: Path) -> list[tuple]:
    (path,) = archive.list_archives(directory)
    cols = ", ".join(f"{n}, typeof({n})" for n in FLOW_NAMES)
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as conn:
        return conn.execute(f"SELECT {cols} FROM flows ORDER BY rowid").fetchall()


def test_rows_bound_in_c_equal_rows_from_record_dicts_on_every_capture(tmp_path, pcaps_dir):
    """native/store.c binds what to_record makes, value for value and type for type (NULLs,
    integers, reals, text), on every shared capture, the malformed ones included."""
    found = sorted(p for p in pcaps_dir.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    assert len(found) > 50
    compared = 0
    for i, path in enumerate(found):
        cfg = make_config(tmp_path / str(i))
        raw = []
        try:
            raw.extend(capture.meter_file_raw(str(path), cfg.flows))
        except capture.CaptureError:
            pass                                   # the records of what could be read
        if not raw:
            continue
        now = raw[-1][2] / 1e6
        dirs = {}
        for how in ("packed", "dicts"):
            d = tmp_path / str(i) / how
            w = ArchiveWriter(dataclasses.replace(cfg.archive, dir=str(d)), cfg.sensor.id, "x", "d")
            if how == "packed":
                w.add_packed(b"".join(capture.RECORD.pack(*r) for r in raw), now)
            else:
                w.add([capture.to_record(r, cfg.sensor.id) for r in raw], now)
            w.close(now)
            dirs[how] = _rows_with_types(d)
        assert dirs["packed"] == dirs["dicts"], path.name
        compared += len(raw)
    assert compared > 3000


def test_records_beyond_the_buffer_limit_go_oldest_first(tmp_path, pcaps_dir):
    """While the disk refuses writes the queue is cut to BUFFER_LIMIT from its oldest end: whole
    drained batches, and the last one cut inside."""
    cfg = make_config(tmp_path, commit_interval=3600)
    raw = list(capture.meter_file_raw(str(pcaps_dir / "large/pcpp-many-protocols.pcap"), cfg.flows))
    batches = [b"".join(capture.RECORD.pack(*r) for r in raw[i:i + 100]) for i in range(0, len(raw), 100)]
    assert len(batches) >= 3
    w = ArchiveWriter(cfg.archive, cfg.sensor.id, "x", "d")
    w.INSERT_BATCH = len(raw) + 1
    now = raw[-1][2] / 1e6
    for batch in batches:
        w.add_packed(batch, now)
    assert w.queued == len(raw)
    assert w._drop_oldest(150) == 150 and w.queued == len(raw) - 150
    w.close(now)
    kept = [r["seq"] for r in query.read_records(Path(cfg.archive.dir))]
    assert kept == [r[0] for r in raw[150:]]


def test_a_quiet_link_commits_its_last_records_within_one_interval(tmp_path, pcaps_dir):
    """Records queued with nothing after them (a link gone quiet) reach the archive once the commit
    interval has passed, through the recorder loop's tick: they do not wait for the next record."""
    cfg = make_config(tmp_path, commit_interval=0.3)
    raw = list(capture.meter_file_raw(str(pcaps_dir / "basic/dpkt-http.pcap"), cfg.flows))
    w = ArchiveWriter(cfg.archive, cfg.sensor.id, "x", "d")
    now = raw[-1][2] / 1e6
    w.add_packed(b"", now)                                 # commits nothing, starts the interval
    w.add_packed(b"".join(capture.RECORD.pack(*r) for r in raw), now)
    assert w.queued == len(raw) and w.records_written == 0
    w.tick(now)
    assert w.records_written == 0                          # the interval has not passed yet
    time.sleep(0.35)
    w.tick(now)
    assert w.queued == 0 and w.records_written == len(raw)
    with archive.open_readonly(archive.list_archives(cfg.archive.dir)[0]) as conn:
        assert conn.execute("SELECT count(*) FROM flows").fetchone()[0] == len(raw)
    w.close(now)


def test_rotation_by_period_splits_nothing_and_info_matches(tmp_path, pcaps_dir):
    # The DNP3 capture spans three hours of packet time: with 10-minute periods it makes many files.
    cfg = make_config(tmp_path, rotate_interval=600)
    path = str(pcaps_dir / "tcp/nfstream-dnp3-long.pcapng")
    recorder.Recorder(cfg).record_files([path])
    files = archive.list_archives(cfg.archive.dir)
    assert len(files) >= 3
    total = 0
    for f in files:
        assert archive.is_closed(f)
        with archive.open_readonly(f) as conn:
            info = archive.read_info(conn)
            n, first, last, maxl = conn.execute(
                "SELECT count(*), min(stime), max(ltime), max(ltime) FROM flows").fetchone()
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert info["state"] == "closed" and info["schema_version"] == archive.SCHEMA_VERSION
        assert info["records"] == n and info["first_stime"] == first and info["last_ltime"] == last
        assert info["sensor_id"] == "test-sensor"
        if n:
            # No record comes from the future of its archive's period.
            assert maxl < info["period_start"] + info["period_seconds"]
        total += n
    metered = list(capture.meter_file(path, cfg))
    assert total == len(metered)
    assert sorted(map(stored, archived_records(Path(cfg.archive.dir))), key=repr) == \
        sorted(map(stored, metered), key=repr)


def test_rotation_closes_the_old_archive_on_a_thread_while_writing_goes_on(tmp_path, pcaps_dir):
    """Closing builds the host and port indexes: seconds for a busy hour. The recorder must go on
    reading its capture meanwhile, so a rotation hands the close to a thread and returns."""
    cfg = make_config(tmp_path, rotate_interval=3600, min_free_percent=0)
    recs = list(capture.meter_file(str(pcaps_dir / "large/pcpp-example.pcap"), cfg))
    hour = archive.period_start(recs[0]["stime"], 3600)
    shift = hour + 3600 - min(r["stime"] for r in recs) + 1          # the same records, next hour
    later = [dict(r, stime=r["stime"] + shift, ltime=r["ltime"] + shift) for r in recs]
    w = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    w.add(recs, now=hour + 1)
    w.commit(hour + 1)
    first, period = w.current.path, w.current.period
    conn = sqlite3.connect(first)                         # a busy hour: 2**11 times the records
    with conn:
        for _ in range(11):
            conn.execute("INSERT INTO flows SELECT * FROM flows")
        big = conn.execute("SELECT count(*) FROM flows").fetchone()[0]
        conn.execute("UPDATE archive_info SET value = ? WHERE key = 'records'", (str(big),))
    conn.close()
    w.current.records = big

    started = time.monotonic()
    w.add(later, now=hour + 3600 + 2)                     # leaves the hour: rotates
    w.commit(hour + 3600 + 2)                             # and writes the next hour's archive
    returned = time.monotonic() - started
    assert w.closing is not None and w.closing.path == first
    assert w.closing.thread.is_alive() and not archive.is_closed(first), \
        f"the close of {big:,} records ended within {returned:.2f} s: not on a thread?"
    second = w.current.path
    assert second != first
    w.close(hour + 3600 + 3)
    assert w.closing is None
    for path, n in ((first, big), (second, len(later))):
        assert archive.is_closed(path)
        with archive.open_readonly(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert archive.read_info(conn)["records"] == n
            assert conn.execute("SELECT count(*) FROM flows").fetchone()[0] == n
            indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            assert {name for name, _ in archive.CLOSE_INDEXES} <= indexes


def test_size_cap_rotates_without_losing_records(tmp_path, pcaps_dir):
    cfg = make_config(tmp_path, size_cap=64 * 1024)
    paths = [str(pcaps_dir / n) for n in ("large/pcpp-tls2.pcap", "tcp/nfstream-synscan.pcap")]
    writer_batch = ArchiveWriter.INSERT_BATCH
    ArchiveWriter.INSERT_BATCH = 200            # small commits, so the cap is checked often
    try:
        recorder.Recorder(cfg).record_files(paths)
    finally:
        ArchiveWriter.INSERT_BATCH = writer_batch
    files = archive.list_archives(cfg.archive.dir)
    assert len(files) >= 2
    expected = sum(len(list(capture.meter_file(p, cfg))) for p in paths)
    assert len(archived_records(Path(cfg.archive.dir))) == expected


def test_retention_deletes_oldest_closed_archives_to_meet_the_quota(tmp_path, pcaps_dir):
    cfg = make_config(tmp_path, rotate_interval=600, quota_bytes=300 * 1024, min_free_percent=0)
    recorder.Recorder(cfg).record_files([str(pcaps_dir / "tcp/nfstream-dnp3-long.pcapng")])
    files = archive.list_archives(cfg.archive.dir)
    used = sum(f.stat().st_size for f in files)
    assert used <= cfg.archive.quota_bytes
    # What is left is the newest part: the last period of the capture is there.
    assert files and files[-1].name >= "flows-2"


def test_a_second_writer_of_a_directory_is_refused_and_the_first_archive_is_left_alone(tmp_path, pcaps_dir):
    """Two recorders on one directory: the second would take the first's open archive for a crash's
    leftover and close it. It must stop with a clear error instead, touching nothing."""
    cfg = make_config(tmp_path)
    src = str(pcaps_dir / "large/pcpp-example.pcap")
    recs = list(capture.meter_file(src, cfg))
    first = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    first.add(recs, now=recs[-1]["ltime"])
    first.commit(recs[-1]["ltime"])
    [path] = archive.list_archives(cfg.archive.dir)
    before = path.read_bytes()

    with pytest.raises(archive.ArchiveError, match=rf"another recorder \(pid {os.getpid()}\)"):
        ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    proc = subprocess.run([str(Path(sys.executable).parent / "flowtap"), "record", "-q", "-r", src,
                           "-d", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert f"is being written by another recorder (pid {os.getpid()})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert archive.list_archives(cfg.archive.dir) == [path]
    assert path.read_bytes() == before and not archive.is_closed(path)

    first.close(recs[-1]["ltime"])               # the lock goes with the writer
    second = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    assert second.recover() == []                 # the first closed its archive itself
    second.close()
    assert len(archived_records(Path(cfg.archive.dir))) == len(recs)


def crashed_archive(cfg: config.Config, src: str) -> tuple[Path, int]:
    """A writer that commits and is then killed: its archive stays in WAL mode, marked open.
    Returns the archive and how many records it committed."""
    script = textwrap.dedent(f"""
        import os, signal, dataclasses
        from appliance import archive, capture, config
        cfg = config.Config(sensor=config.SensorConfig(id="test-sensor"))
        cfg = dataclasses.replace(cfg, archive=dataclasses.replace(cfg.archive, dir={cfg.archive.dir!r}))
        w = archive.ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
        recs = list(capture.meter_file({src!r}, cfg))
        w.add(recs, now=recs[-1]["ltime"])
        w.commit(recs[-1]["ltime"])
        print(len(recs), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [path] = archive.list_archives(cfg.archive.dir)
    assert not archive.is_closed(path) and Path(f"{path}-wal").exists()
    return path, int(proc.stdout)


def test_recovery_closes_an_archive_left_open_by_a_crash(tmp_path, pcaps_dir):
    cfg = make_config(tmp_path)
    path, written = crashed_archive(cfg, str(pcaps_dir / "large/pcpp-example.pcap"))
    recovered = ArchiveWriter(cfg.archive, "test-sensor", "x", "d").recover()
    assert recovered == [path]
    assert archive.is_closed(path) and not Path(f"{path}-wal").exists()
    with archive.open_readonly(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert archive.read_info(conn)["state"] == "recovered"
        assert conn.execute("SELECT count(*) FROM flows").fetchone()[0] == written


def test_recovery_sets_a_damaged_archive_aside_and_recording_starts(tmp_path, pcaps_dir, caplog):
    """An archive left open by a crash whose flash page went bad: recovery cannot build its
    indexes. It must not stop the recorder from starting: the archive is closed as it is."""
    cfg = make_config(tmp_path, min_free_percent=0)
    path, written = crashed_archive(cfg, str(pcaps_dir / "large/pcpp-example.pcap"))
    conn = sqlite3.connect(path)                          # the WAL moved into the file, then damage
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    damage_page(path, "flows")

    w = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    assert w.recover() == []
    assert archive.is_closed(path) and "is damaged" in caplog.text
    with archive.open_readonly(path) as conn:
        assert archive.read_info(conn)["state"] == "damaged"
    recs = list(capture.meter_file(str(pcaps_dir / "basic/dpkt-http.pcap"), cfg))
    w.add(recs, now=recs[-1]["ltime"])
    w.close(recs[-1]["ltime"])
    fresh = [p for p in archive.list_archives(cfg.archive.dir) if p != path]
    assert len(fresh) == 1 and len(list(query.read_records(fresh[0]))) == len(recs)
    kept = []
    with pytest.raises(query.QueryError, match="damaged"):
        kept.extend(query.read_records(path))
    assert 0 < len(kept) < written


def test_readers_open_closed_archives_read_only(tmp_path, pcaps_dir):
    cfg = make_config(tmp_path)
    recorder.Recorder(cfg).record_files([str(pcaps_dir / "basic/dpkt-http.pcap")])
    [path] = archive.list_archives(cfg.archive.dir)
    with archive.open_readonly(path) as conn:
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("DELETE FROM flows")


def test_a_non_archive_is_refused(tmp_path):
    bogus = tmp_path / "flows-20240101T000000Z.sqlite"
    bogus.write_bytes(b"not a database at all" * 100)
    with pytest.raises(archive.ArchiveError):
        archive.open_readonly(bogus)


def test_sensor_status_rows_are_written(tmp_path, pcaps_dir):
    cfg = make_config(tmp_path)
    recorder.Recorder(cfg).record_files([str(pcaps_dir / "large/nfstream-tor.pcapng")])
    rows = []
    for path in archive.list_archives(cfg.archive.dir):
        with archive.open_readonly(path) as conn:
            rows += conn.execute("SELECT time, packets FROM sensor_status ORDER BY time").fetchall()
    # The Tor capture lasts 616 s: at most a row a minute of packet time (none in quiet minutes)
    # plus the final one, and the packets add up to the file.
    times = [r[0] for r in rows]
    assert len(rows) >= 5
    assert all(b - a >= 60 for a, b in zip(times[:-2], times[1:-1]))
    assert sum(r[1] for r in rows) == 3859


def test_a_damaged_open_archive_is_set_aside_and_recording_goes_on(tmp_path, pcaps_dir, caplog):
    """A page of the open archive goes bad under the writer (flash does that). The writer must not
    retry it forever, nor delete closed archives to "make room" (it used to: one per failed
    commit): it sets the damaged one aside, read-only, and writes what is queued to a new archive
    of the same period."""
    cfg = make_config(tmp_path, min_free_percent=0, commit_interval=3600)
    earlier = list(capture.meter_file(str(pcaps_dir / "large/pcpp-example.pcap"), cfg))
    w = ArchiveWriter(cfg.archive, cfg.sensor.id, "x", "d")
    w.add(earlier, now=max(r["ltime"] for r in earlier))
    w.close()
    (closed,) = archive.list_archives(tmp_path / "archive")
    closed_bytes = closed.read_bytes()
    raw = list(capture.meter_file_raw(str(pcaps_dir / "large/pcpp-many-protocols.pcap"), cfg.flows))
    batches = [b"".join(capture.RECORD.pack(*r) for r in raw[i:i + 100]) for i in range(0, len(raw), 100)]
    now = raw[-1][2] / 1e6
    w = ArchiveWriter(cfg.archive, cfg.sensor.id, "x", "d")
    w.add_packed(batches[0], now)
    w.commit(now)
    first, period = w.current.path, w.current.period
    conn = sqlite3.connect(first)                        # a reader moves the WAL into the file
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    damage_page(first, "flows", which=-1)                # where the next rows would go

    for batch in batches[1:]:
        w.add_packed(batch, now)
    w.commit(now)                                        # fails: the archive is damaged
    assert w.current is None and w.queued == len(raw) - 100
    assert archive.is_closed(first)
    w.commit(now)                                        # the queued records, in a new archive
    second = w.current.path
    assert second != first and second.name.endswith("-1.sqlite") and w.current.period == period
    w.close(now)
    assert not Path(f"{first}-wal").exists()             # its WAL went into it
    with archive.open_readonly(first) as conn:
        assert archive.read_info(conn)["state"] == "damaged"

    assert "is damaged" in caplog.text
    assert closed.read_bytes() == closed_bytes           # nothing was deleted to "make room"
    assert [r["seq"] for r in query.read_records(second)] == [r[0] for r in raw[100:]]
    with archive.open_readonly(second) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    kept = []
    with pytest.raises(query.QueryError, match="damaged"):
        for r in query.read_records(first):
            kept.append(r["seq"])
    assert set(kept) < {r[0] for r in raw[:100]} and len(kept) > 50


def test_sqlite_utils_reads_a_closed_archive_and_leaves_it_alone(tmp_path, pcaps_dir):
    """Archives describe themselves: the sqlite-utils CLI installed with flowtap lists, reads and
    exports one without flowtap, and the closed archive stays byte-identical."""
    cfg = make_config(tmp_path, min_free_percent=0)
    assert recorder.Recorder(cfg).record_files([str(pcaps_dir / "large/pcpp-example.pcap")]) == []
    (path,) = archive.list_archives(cfg.archive.dir)
    before = path.read_bytes()
    tool = str(Path(sys.executable).with_name("sqlite-utils"))

    def run(*args: str) -> str:
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    counts = {t["table"]: t["count"] for t in json.loads(run("tables", str(path), "--counts"))}
    info = {r["key"]: json.loads(r["value"]) for r in json.loads(run("rows", str(path), "archive_info"))}
    assert counts["flows"] == info["records"] == 136 and info["state"] == "closed"
    rows = run("query", str(path), "SELECT saddr, daddr, sbytes + dbytes AS bytes FROM flows "
               "ORDER BY rowid", "--csv").splitlines()
    want = [f"{r['saddr']},{r['daddr']},{r['bytes']}" for r in query.read_records(path)]
    assert rows == ["saddr,daddr,bytes", *want]
    assert path.read_bytes() == before and archive.is_closed(path)
