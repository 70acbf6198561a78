"""Following growing IDS alert files (appliance/alert_follow.py) and its [alerts] configuration.

Real files written as an IDS writes them (append mode, kept open across a rename), real SQLite
alert stores, the real parsers; no mocks. Each alert carries its own signature id, so "imported
exactly once" is a count per sid in the store. Most tests drive ``Follower.step()`` round by
round; the process tests run ``flowtap alerts follow`` as systemd would (notify socket, SIGTERM).
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import pytest

from appliance import alert_follow, alert_formats, alerts, config
from appliance.alert_follow import Follower, follow_command
from appliance.alerts_cli import alerts as alerts_group
from appliance.archive import ArchiveWriter
from conftest import build_record

T0 = 1_700_000_000             # 2023-11-14 22:13:20 UTC
# `flowtap alerts follow` as installed once cli.py's alerts group carries it; until then the same
# command object run as its own program.
FOLLOW = ([str(Path(sys.executable).parent / "flowtap"), "alerts", "follow"]
          if "follow" in alerts_group.commands else
          [sys.executable, "-c", "from appliance.alert_follow import follow_command; "
           "follow_command(prog_name='flowtap alerts follow')"])


def eve(sid: int, t: float | None = None) -> str:
    """One Suricata EVE alert line (signature id ``sid``)."""
    ts = datetime.fromtimestamp(t if t is not None else T0 + sid, timezone.utc)
    return json.dumps({
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"), "flow_id": 1000 + sid,
        "in_iface": "br0", "event_type": "alert", "src_ip": "10.0.0.1", "src_port": 40000,
        "dest_ip": "198.18.0.1", "dest_port": 80, "proto": "TCP",
        "alert": {"action": "allowed", "gid": 1, "signature_id": sid, "rev": 1,
                  "signature": f"flowtap test {sid}", "category": "Misc activity", "severity": 3},
    }) + "\n"


def fast(sid: int) -> str:
    """One Snort/Suricata alert_fast line (no year: it comes from the archives' span)."""
    return (f"11/14-22:13:{sid % 60:02d}.{sid:06d}  [**] [1:{sid}:1] flowtap test {sid} [**] "
            f"[Classification: Misc activity] [Priority: 3] {{TCP}} 10.0.0.1:40000 -> 198.18.0.1:80\n")


def stored(store: Path) -> collections.Counter:
    """How often each sid is in the alert store."""
    count: collections.Counter = collections.Counter()
    for path in alerts.alert_files(store):
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            count.update(sid for (sid,) in conn.execute("SELECT sid FROM alerts"))
    return count


def once(*sids: int) -> collections.Counter:
    return collections.Counter(sids)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "data" / "archive"


@pytest.fixture
def follow(tmp_path, store):
    """Makes followers of some files into ``store`` (state in tmp_path/state); closes them all."""
    made: list[Follower] = []

    def make(*files: Path, state: Path | None = None, into: Path | None = None, **kw) -> Follower:
        state = state or tmp_path / "state" / "follow.json"
        f = Follower([str(p) for p in files], into or store, state, **kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


@pytest.fixture
def appender():
    """The IDS: files opened for appending, line-buffered, kept open across a rename."""
    opened = []

    def open_(path: Path, mode: str = "a"):
        f = open(path, mode, buffering=1 if mode == "a" else 0)
        opened.append(f)
        return f
    yield open_
    for f in opened:
        f.close()


def state_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / "follow.json").read_text())


# --- configuration ---------------------------------------------------------------------------------

def test_alerts_config_defaults_and_values():
    a = config.Config().alerts
    assert (a.files, a.format, a.state_file, a.poll_interval, a.batch) == ((), "auto", "", 1.0, 5000)
    assert a.state_path("/var/lib/flowtap/archive") == Path("/var/lib/flowtap/alerts/follow.json")
    cfg = config.from_dict({"alerts": {"files": ["/var/log/suricata/eve.json"], "format": "eve",
                                       "state_file": "/srv/follow.json", "poll_interval": 0.5,
                                       "batch": 100}})
    assert cfg.alerts.files == ("/var/log/suricata/eve.json",)
    assert cfg.alerts.state_path("/elsewhere") == Path("/srv/follow.json")
    assert config.from_dict({"alerts": {"files": "/var/log/snort/alert_fast.txt"}}).alerts.files == \
        ("/var/log/snort/alert_fast.txt",)


@pytest.mark.parametrize("values, message", [
    ({"files": ["eve.json"]}, "alerts.files: 'eve.json' must be an absolute path"),
    ({"files": [""]}, "alerts.files: must be a list of non-empty strings"),
    ({"format": "unified2"}, "alerts.format: must be one of auto, eve, snort3-json, snort3-csv, fast"),
    ({"state_file": "follow.json"}, "alerts.state_file: must be an absolute path or empty"),
    ({"poll_interval": 0}, "alerts.poll_interval: must be a number from 0.1 to 60"),
    ({"poll_interval": "1s"}, "alerts.poll_interval: must be a number"),
    ({"batch": 0}, "alerts.batch: must be an integer from 1 to 100000"),
    ({"batch": 2.5}, "alerts.batch: must be an integer"),
    ({"follow": True}, "alerts.follow: unknown key"),
])
def test_alerts_config_refusals_name_the_key(values, message):
    with pytest.raises(config.ConfigError, match="^" + re.escape(message)):
        config.from_dict({"alerts": values})


def test_followed_formats_are_line_formats_the_readers_know():
    followed = set(config.ALERT_FORMATS) - {"auto"}
    assert followed <= set(alert_formats.FORMATS)
    assert "unified2" in alert_formats.FORMATS and "unified2" not in followed


# --- following -------------------------------------------------------------------------------------

def test_appended_lines_are_imported_and_positions_saved(tmp_path, store, follow, appender):
    path = tmp_path / "eve.json"
    ids = appender(path)
    ids.write(eve(1) + eve(2))
    f = follow(path)
    assert not f.step()
    assert stored(store) == once(1, 2)
    ids.write(eve(3))
    f.step()
    assert stored(store) == once(1, 2, 3)
    (pos,) = state_of(tmp_path)["files"][str(path)]
    st = path.stat()
    assert (pos["dev"], pos["ino"], pos["offset"], pos["format"]) == (st.st_dev, st.st_ino, st.st_size, "eve")
    f.step()                                              # nothing new: nothing imported twice
    assert f.totals.imported == 3 and f.totals.duplicates == 0


def test_batches_are_bounded_and_drain_reads_everything(tmp_path, store, follow):
    path = tmp_path / "eve.json"
    path.write_text("".join(eve(i) for i in range(1, 12)))
    f = follow(path, batch=5)
    assert f.step() is True                               # a full batch: more is waiting
    assert sum(stored(store).values()) == 5
    f.drain()
    assert stored(store) == once(*range(1, 12))


def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path, store, follow, appender,
                                                                 monkeypatch):
    path, old = tmp_path / "eve.json", tmp_path / "eve.json.1"
    ids = appender(path)
    ids.write(eve(1) + eve(2))
    f = follow(path)
    f.step()
    os.rename(path, old)                                  # logrotate
    ids.write(eve(3))                                     # the IDS has not reopened yet
    f.step()
    new = appender(path)                                  # it reopens (SIGHUP) ...
    new.write(eve(4))
    ids.write(eve(5))                                     # ... a late line into the old file
    f.step()
    assert stored(store) == once(1, 2, 3, 4, 5)
    positions = state_of(tmp_path)["files"][str(path)]
    assert [p["ino"] for p in positions] == [old.stat().st_ino, path.stat().st_ino]
    monkeypatch.setattr(alert_follow, "ROTATED_QUIET", 0.0)
    new.write(eve(6))
    f.step()                                              # the old file is quiet: closed
    (pos,) = state_of(tmp_path)["files"][str(path)]
    assert (pos["ino"], pos["offset"]) == (path.stat().st_ino, path.stat().st_size)
    assert stored(store) == once(1, 2, 3, 4, 5, 6)


def test_a_file_rotated_while_stopped_is_finished_first(tmp_path, store, follow, caplog, appender):
    path, old = tmp_path / "eve.json", tmp_path / "eve.json.1"
    ids = appender(path)
    ids.write(eve(1))
    f = follow(path)
    f.step()
    f.close()                                             # stopped
    os.rename(path, old)
    ids.write(eve(2))
    appender(path).write(eve(3))
    g = follow(path)
    g.drain()
    assert stored(store) == once(1, 2, 3)
    assert g.totals.duplicates == 0
    g.close()
    # Rotated away and gone (compressed, deleted) while stopped: said so, the new file from 0.
    os.rename(path, tmp_path / "eve.json.2")
    (tmp_path / "eve.json.2").unlink()
    old.unlink()
    appender(path).write(eve(4))
    with caplog.at_level(logging.WARNING, logger="appliance.alert_follow"):
        follow(path).drain()
    assert "rotated away while stopped" in caplog.text
    assert stored(store) == once(1, 2, 3, 4)


def test_copytruncate_starts_again_from_zero(tmp_path, store, follow, appender):
    path = tmp_path / "fast.log"
    ids = appender(path)
    ids.write(eve(1) + eve(2) + eve(3))
    f = follow(path)
    f.step()
    shutil.copy(path, tmp_path / "fast.log.1")           # logrotate copytruncate
    os.truncate(path, 0)
    ids.write(eve(4))                                     # O_APPEND: at the new end, 0
    f.step()
    assert stored(store) == once(1, 2, 3, 4)
    # Truncated and refilled past the old offset before the next look: the first bytes differ.
    os.truncate(path, 0)
    ids.write(eve(5) + eve(6) + eve(7))
    assert path.stat().st_size > state_of(tmp_path)["files"][str(path)][0]["offset"]
    f.step()
    assert stored(store) == once(*range(1, 8))


def test_restart_neither_repeats_nor_loses(tmp_path, store, follow, appender):
    path = tmp_path / "eve.json"
    ids = appender(path)
    ids.write("".join(eve(i) for i in range(1, 11)))
    f = follow(path, batch=3)
    f.step()                                              # 3 of 10 committed, then stopped
    f.close()
    assert sum(stored(store).values()) == 3
    ids.write("".join(eve(i) for i in range(11, 16)))
    g = follow(path, batch=3)
    g.drain()
    assert stored(store) == once(*range(1, 16))
    assert (g.totals.imported, g.totals.duplicates) == (12, 0)


def test_partial_lines_wait_for_their_newline(tmp_path, store, follow, appender):
    path = tmp_path / "eve.json"
    ids = appender(path, "ab")
    line = eve(1).encode()
    ids.write(line[:40])
    f = follow(path)
    f.step()
    ids.write(line[40:-1])
    f.step()
    assert stored(store) == once()
    assert state_of(tmp_path)["files"][str(path)][0]["offset"] == 0
    ids.write(b"\n" + eve(2).encode().replace(b"\n", b"\r\n"))   # CRLF too
    f.step()
    assert stored(store) == once(1, 2)
    assert f.sources[0].stats.bad == 0


def test_a_missing_file_is_waited_for_and_logged_once(tmp_path, store, follow, caplog):
    path = tmp_path / "suricata" / "eve.json"
    f = follow(path)
    with caplog.at_level(logging.INFO, logger="appliance.alert_follow"):
        for _ in range(3):
            f.step()
    assert caplog.text.count("waiting for it") == 1
    path.parent.mkdir()
    path.write_text(eve(1))
    f.step()
    assert stored(store) == once(1)
    path.unlink()                                         # disappears ...
    f.step()
    path.write_text(eve(2))                               # ... and comes back
    f.step()
    assert stored(store) == once(1, 2)


def test_bad_lines_are_counted_logged_and_skipped(tmp_path, store, follow, caplog):
    path = tmp_path / "eve.json"
    stats_event = json.dumps({"timestamp": "2023-11-14T22:13:20.000000+0000", "event_type": "stats",
                              "stats": {"uptime": 10}})
    path.write_text(eve(1) + "garbage, not JSON\n" + stats_event + "\n\n" + "[1, 2]\n" + eve(2))
    f = follow(path)
    with caplog.at_level(logging.WARNING, logger="appliance.alert_follow"):
        f.step()
    assert stored(store) == once(1, 2)
    st = f.sources[0].stats
    assert (st.read, st.bad, st.skipped) == (2, 2, 2)
    assert st.first_bad[0] == len(eve(1)) and st.first_bad[1].endswith(": garbage, not JSON")
    assert f"{path}: bad line at byte {len(eve(1))}: " in caplog.text


def test_unified2_is_not_followed(tmp_path, store, follow, caplog):
    path = tmp_path / "snort.u2.1700000000"
    path.write_bytes(struct.pack(">II", 7, 52) + bytes(52))       # a unified2 event record
    f = follow(path)
    with caplog.at_level(logging.WARNING, logger="appliance.alert_follow"):
        f.step()
        f.step()
    assert caplog.text.count("unified2 is not followed") == 1
    assert stored(store) == once()


def test_a_hostile_5_mb_line_is_skipped_in_bounded_memory(tmp_path, store, follow):
    path = tmp_path / "eve.json"
    with open(path, "w") as out:
        out.write(eve(1) + "A" * (5 << 20))               # no newline, ever (so far)
    f = follow(path)
    tracemalloc.start()
    try:
        f.step()
        f.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * alert_follow.MAX_LINE, f"{peak} bytes at peak for a 5 MB line"
    assert stored(store) == once(1)
    assert f.sources[0].stats.bad == 1
    with open(path, "a") as out:
        out.write("A" * 1000 + "\n" + eve(2))            # its newline comes at last
    f.step()
    assert stored(store) == once(1, 2)
    assert f.sources[0].stats.bad == 1


@pytest.mark.parametrize("corrupt", [b"{not json", b"\xff\xfe", b"[]", b'{"version": 99, "files": {}}',
                                     b'{"version": 1, "files": {"x": [{"dev": "a"}]}}'])
def test_a_corrupt_state_file_means_from_the_beginning(tmp_path, store, follow, caplog, corrupt):
    """From the beginning, not the end: the ids dedupe, so nothing is stored twice, nothing lost."""
    path = tmp_path / "eve.json"
    path.write_text(eve(1) + eve(2))
    follow(path).drain()
    (tmp_path / "state" / "follow.json").write_bytes(corrupt)
    with open(path, "a") as out:
        out.write(eve(3))
    with caplog.at_level(logging.WARNING, logger="appliance.alert_follow"):
        g = follow(path)
    assert "reading every file from its beginning" in caplog.text
    g.drain()
    assert stored(store) == once(1, 2, 3)
    assert (g.totals.imported, g.totals.duplicates) == (1, 2)
    assert state_of(tmp_path)["version"] == alert_follow.STATE_VERSION


def test_an_archive_directory_not_there_yet(tmp_path, follow, caplog):
    path = tmp_path / "eve.json"
    path.write_text(eve(1))
    data = tmp_path / "data"
    data.write_text("a file where the data directory should be")
    f = follow(path, into=data / "archive")
    with caplog.at_level(logging.ERROR, logger="appliance.alert_follow"):
        f.step()
        f.step()
    assert f.store_error and caplog.text.count("cannot import") == 1
    assert not (tmp_path / "state" / "follow.json").exists()      # nothing committed, nothing saved
    data.unlink()                                                 # the recorder makes it later
    f.step()
    assert f.store_error is None and stored(data / "archive") == once(1)


def test_fast_lines_take_their_year_from_the_archives(tmp_path, store, follow):
    """Year-less alert_fast times: the year of the recorded span, as ``alerts import`` takes it."""
    cfg = config.Config(sensor=config.SensorConfig(id="test-sensor"))
    cfg = config.replace_section(cfg, "archive", dir=str(store), min_free_percent=0)
    w = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    w.add([build_record(stime=T0, ltime=T0 + 60, seq=1, sintf=0)], now=T0 + 60)
    w.close(T0 + 7200)
    path = tmp_path / "alert_fast.txt"
    path.write_text(fast(7) + fast(8))
    f = follow(path)
    f.step()
    assert stored(store) == once(7, 8)
    (hour,) = alerts.alert_files(store)
    with contextlib.closing(sqlite3.connect(hour)) as conn:
        times = [t for (t,) in conn.execute("SELECT time FROM alerts")]
    assert all(datetime.fromtimestamp(t, timezone.utc).year == 2023 for t in times)
    assert state_of(tmp_path)["files"][str(path)][0]["format"] == "fast"


# --- the command -----------------------------------------------------------------------------------

def write_config(tmp_path: Path, files: list[Path], **values) -> Path:
    path = tmp_path / "flowtap.toml"
    lines = ["[alerts]", f"files = {json.dumps([str(f) for f in files])}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_follow(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*FOLLOW, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_once_imports_what_is_there_and_exits(tmp_path):
    eve_path = tmp_path / "eve.json"
    eve_path.write_text(eve(1) + eve(2) + "junk\n")
    cfg = write_config(tmp_path, [eve_path])
    archive = tmp_path / "data" / "archive"               # not made yet
    proc = run_follow("-c", str(cfg), "-d", str(archive), "--once")
    assert proc.returncode == 0, proc.stderr
    assert f"{eve_path}: alerts 2 skipped 0 bad 1" in proc.stdout
    assert f"flowtap: {eve_path}: byte {2 * len(eve(1))}: not JSON" in proc.stderr
    assert "2 alerts imported, 0 already stored" in proc.stdout
    assert stored(archive) == once(1, 2)
    assert (tmp_path / "data" / "alerts" / "follow.json").exists()      # beside the archive directory
    with open(eve_path, "a") as out:
        out.write(eve(3))
    proc = run_follow("-c", str(cfg), "-d", str(archive), "--once", "--state", str(tmp_path / "s.json"))
    assert "1 alerts imported, 2 already stored" in proc.stdout   # new state: from the start


def test_once_through_click(tmp_path, runner):
    eve_path = tmp_path / "eve.json"
    eve_path.write_text(eve(1))
    archive = tmp_path / "archive"
    args = ["-c", str(write_config(tmp_path, [eve_path])), "-d", str(archive), "--once"]
    result = runner.invoke(follow_command, args)
    assert result.exit_code == 0, result.output
    assert "1 alerts imported, 0 already stored" in result.output
    assert "0 alerts imported" in runner.invoke(follow_command, args).output
    assert stored(archive) == once(1)


def test_command_refusals(tmp_path, runner):
    empty = write_config(tmp_path, [])
    result = runner.invoke(follow_command, ["-c", str(empty), "-d", str(tmp_path), "--once"])
    assert result.exit_code == 2 and "alerts.files is empty" in result.output
    bad = write_config(tmp_path, [tmp_path / "eve.json"], format="pcap")
    result = runner.invoke(follow_command, ["-c", str(bad), "--once"])
    assert result.exit_code == 2 and "config: alerts.format:" in result.output
    help_text = runner.invoke(follow_command, ["--help"]).output
    assert "Example:" in help_text and "--once" in help_text


def receive(sock: socket.socket, until, timeout: float) -> list[dict[str, str]]:
    """sd_notify messages until ``until(messages)`` holds."""
    messages: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        left = deadline - time.monotonic()
        assert left > 0, f"notify socket: gave up with {messages}"
        sock.settimeout(left)
        with contextlib.suppress(socket.timeout):
            data = sock.recv(4096).decode()
            messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
    return messages


def wait_stored(store: Path, want: collections.Counter, timeout: float) -> float:
    """Seconds until the store holds ``want`` (fails after timeout)."""
    start = time.monotonic()
    while stored(store) != want:
        assert time.monotonic() - start < timeout, f"{stored(store)} after {timeout} s, want {want}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_the_service_follows_live_and_restarts_without_loss(tmp_path, appender):
    """As systemd runs it: READY, watchdog pings, lines imported within a second or two of their
    arrival, STOPPING and exit 0 on SIGTERM; lines written while it is stopped come in on restart."""
    eve_path, data = tmp_path / "eve.json", tmp_path / "data"
    cfg = write_config(tmp_path, [eve_path], poll_interval=0.2)
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "JOURNAL_STREAM")}
    env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="1000000")
    ids = appender(eve_path)
    proc: subprocess.Popen | None = None

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([*FOLLOW, "-c", str(cfg), "-d", str(data)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert receive(sock, lambda ms: any(m.get("READY") == "1" for m in ms), 30)
        return proc

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        receive(sock, lambda ms: any(m.get("STOPPING") == "1" for m in ms), 10)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err

    try:
        proc = start()
        ids.write(eve(1))
        assert wait_stored(data, once(1), 10) < 2.5
        ids.write(eve(2) + eve(3))
        assert wait_stored(data, once(1, 2, 3), 10) < 2.5
        pings = receive(sock, lambda ms: sum(m.get("WATCHDOG") == "1" for m in ms) >= 2, 5)
        assert "3 alerts imported" in [m for m in pings if m.get("WATCHDOG")][-1]["STATUS"]
        stop(proc)
        ids.write(eve(4) + eve(5))                        # while stopped
        proc = start()
        wait_stored(data, once(1, 2, 3, 4, 5), 10)
        stop(proc)
    finally:
        sock.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stored(data) == once(1, 2, 3, 4, 5)
