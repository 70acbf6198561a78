"""The alert store and the link between alerts and sessions (appliance/alerts.py), and the
`flowtap alerts` / `ra --around` / `- alert` commands on real archives.

Records are written by the real archive writer into real SQLite files; the link rule is checked at
its edges (both orientations, ±30 s, Community ID, ICMP, status records, unlinked)."""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from appliance import alerts, archive, config, query
from appliance import filter as _filter
from appliance.alert_types import Alert
from appliance.archive import ArchiveWriter
from appliance.cli import cli
from conftest import build_record

T0 = 1_700_000_000.0          # 2023-11-14 22:13:20 UTC


def make_config(tmp_path: Path, **kw) -> config.Config:
    cfg = config.Config(sensor=config.SensorConfig(id="test-sensor"))
    return dataclasses.replace(cfg, archive=dataclasses.replace(cfg.archive, dir=str(tmp_path / "archive"), **kw))


def write_archive(tmp_path: Path, records: list[dict]) -> Path:
    """Records into real archives (closed), via the recorder's writer."""
    cfg = make_config(tmp_path, min_free_percent=0)
    w = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    for i, r in enumerate(records, 1):
        r.setdefault("seq", i)
        r.setdefault("sintf", 0)
    w.add(records, now=max(r["ltime"] for r in records))
    w.close(max(r["ltime"] for r in records) + 7200)
    return Path(cfg.archive.dir)


def alert(t: float, raw: str = "", **kw) -> Alert:
    base = dict(time=t, gid=1, sid=2000001, rev=3, msg="ET TEST", proto=6, saddr="10.0.0.1",
                sport=40000, daddr="198.18.0.1", dport=80, format="eve", raw=raw or f"line {t} {kw}")
    base.update(kw)
    return Alert(**base)


def seqs(records: list[dict]) -> list[int]:
    return [r["seq"] for r in records]


@pytest.fixture
def one_session(tmp_path):
    """One TCP session 10.0.0.1:40000 -> 198.18.0.1:80 over [T0, T0 + 10]."""
    rec = build_record(stime=T0, ltime=T0 + 10, community_id="1:good=")
    return write_archive(tmp_path, [rec])


@pytest.mark.parametrize("offset,linked", [(-30.0, True), (-30.001, False), (5.0, True),
                                           (40.0, True), (40.001, False)])
def test_time_window_is_stime_minus_30_to_ltime_plus_30(one_session, offset, linked):
    a = alert(T0 + offset)
    alerts.import_alerts(one_session, [a])
    row = alerts.find(one_session, a.id)
    assert bool(alerts.sessions_of(one_session, row)) is linked


@pytest.mark.parametrize("swap", [False, True])
def test_either_orientation_links(one_session, swap):
    kw = dict(saddr="198.18.0.1", sport=80, daddr="10.0.0.1", dport=40000) if swap else {}
    a = alert(T0 + 1, **kw)
    assert alerts.import_alerts(one_session, [a]).linked == 1
    assert seqs(alerts.sessions_of(one_session, alerts.find(one_session, a.id))) == [1]


@pytest.mark.parametrize("kw", [dict(sport=40001), dict(dport=81), dict(proto=17),
                                dict(saddr="10.0.0.2"),
                                dict(saddr="198.18.0.1", sport=40000, daddr="10.0.0.1", dport=80)])
def test_other_endpoints_do_not_link(one_session, kw):
    """Ports must pair with their own address: swapping addresses but not ports is another flow."""
    a = alert(T0 + 1, **kw)
    r = alerts.import_alerts(one_session, [a])
    assert (r.linked, r.unlinked) == (0, 1)


def test_community_id_must_agree_when_the_alert_has_one(one_session):
    good, bad = alert(T0 + 1, community_id="1:good="), alert(T0 + 2, community_id="1:other=")
    r = alerts.import_alerts(one_session, [good, bad])
    assert (r.linked, r.unlinked) == (1, 1)
    assert alerts.sessions_of(one_session, alerts.find(one_session, bad.id)) == []


def test_icmp_links_by_addresses(tmp_path):
    rec = build_record(stime=T0, ltime=T0 + 2, proto=1, sport=8, dport=0, saddr="10.0.0.1",
                       daddr="10.0.0.9", community_id=None)
    d = write_archive(tmp_path, [rec])
    a = alert(T0 + 1, proto=1, saddr="10.0.0.9", sport=None, daddr="10.0.0.1", dport=None)
    other = alert(T0 + 1, proto=1, saddr="10.0.0.9", sport=None, daddr="10.0.0.2", dport=None)
    r = alerts.import_alerts(d, [a, other])
    assert (r.linked, r.unlinked) == (1, 1)


def test_ipv6_links(tmp_path):
    rec = build_record(stime=T0, ltime=T0 + 2, saddr="2001:db8::1", daddr="2001:db8::2")
    d = write_archive(tmp_path, [rec])
    a = alert(T0 + 1, saddr="2001:db8::2", sport=80, daddr="2001:db8::1", dport=40000)
    assert alerts.import_alerts(d, [a]).linked == 1


def test_every_status_record_of_a_long_session_links(tmp_path):
    """A session of six Status records and a Stop, across two hours (two archives): an alert in
    its third minute links all seven; an unrelated earlier session of the same ports does not."""
    recs = [build_record(stime=T0 - 600, ltime=T0 - 590, cause="Stop")]
    for i in range(6):
        recs.append(build_record(stime=T0 + 60 * i, ltime=T0 + 60 * i + 50, cause="Status"))
    recs.append(build_record(stime=T0 + 360, ltime=T0 + 370, cause="Stop"))
    cfg = make_config(tmp_path, min_free_percent=0, rotate_interval=180)
    w = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    for i, r in enumerate(recs, 1):
        r["seq"], r["sintf"] = i, 0
        w.add([r], now=r["ltime"])
        w.commit(r["ltime"])
        w.rotate_if_due(r["ltime"])
    w.close(T0 + 9000)
    d = Path(cfg.archive.dir)
    assert len(archive.list_archives(d)) >= 2
    a = alert(T0 + 130)
    alerts.import_alerts(d, [a])
    assert seqs(alerts.sessions_of(d, alerts.find(d, a.id))) == [2, 3, 4, 5, 6, 7, 8]
    # The filter primitive selects the same records, in each archive.
    assert seqs(query.read_records(d, _filter.parse("alert"))) == [2, 3, 4, 5, 6, 7, 8]
    assert seqs(query.read_records(d, _filter.parse("not alert"))) == [1]


def test_alert_imported_before_its_record_links_later(tmp_path):
    d0 = write_archive(tmp_path, [build_record(stime=T0 - 9000, ltime=T0 - 8990, saddr="10.9.9.9")])
    a = alert(T0 + 1)
    r = alerts.import_alerts(d0, [a])
    assert (r.linked, r.unlinked) == (0, 1)
    write_archive(tmp_path, [build_record(stime=T0, ltime=T0 + 10, seq=7)])
    assert seqs(alerts.sessions_of(d0, alerts.find(d0, a.id))) == [7]


def test_same_line_twice_is_one_alert(one_session):
    a = alert(T0 + 1, raw="the same line")
    first = alerts.import_alerts(one_session, [a, a])
    again = alerts.import_alerts(one_session, [a])
    assert (first.imported, first.duplicates, again.imported, again.duplicates) == (1, 1, 0, 1)
    assert len(alerts.list_alerts(one_session)) == 1


def test_import_leaves_closed_archives_byte_identical_and_files_per_hour(one_session):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in one_session.iterdir()}
    alerts.import_alerts(one_session, [alert(T0 + 1), alert(T0 + 3700), alert(T0 - 3600 * 30)])
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in one_session.iterdir()
             if p.name.startswith("flows-")}
    assert after == {k: v for k, v in before.items() if k.startswith("flows-")}
    names = sorted(p.name for p in one_session.glob("alerts-*.sqlite"))
    assert names == ["alerts-20231113T160000Z.sqlite", "alerts-20231114T220000Z.sqlite",
                     "alerts-20231114T230000Z.sqlite"]
    # Each is a plain SQLite file that says what it is, and passes integrity_check.
    conn = sqlite3.connect(one_session / names[1])
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    info = dict(conn.execute("SELECT key, value FROM alert_info"))
    assert info["schema_version"] == 1 and info["hour"] == "20231114T22"
    conn.close()


def test_a_planted_symlink_is_not_read(one_session, tmp_path):
    """A link named like an hour file (as an attacker with the recorder's user could plant) is
    never opened: its alerts do not appear."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    alerts.import_alerts(other, [alert(T0 + 1, msg="planted")])
    target = next(other.glob("alerts-*.sqlite"))
    (one_session / target.name).symlink_to(target)
    assert alerts.list_alerts(one_session) == []


def test_a_damaged_alert_file_is_named_and_others_still_read(one_session):
    alerts.import_alerts(one_session, [alert(T0 + 1), alert(T0 + 7200, raw="later")])
    first = sorted(one_session.glob("alerts-*.sqlite"))[0]
    first.write_bytes(b"garbage" * 100)
    with pytest.raises(alerts.AlertStoreError, match=first.name):
        list(alerts.iter_alerts(one_session))
    assert [a["time"] for a in alerts.list_alerts(one_session, lo=T0 + 3600)] == [T0 + 7200]


def test_retention_deletes_an_hours_alerts_with_its_archives(tmp_path):
    recs = [build_record(stime=T0 + 3600 * i, ltime=T0 + 3600 * i + 1, seq=i + 1, sintf=0)
            for i in range(3)]
    cfg = make_config(tmp_path, min_free_percent=0, rotate_interval=3600)
    w = ArchiveWriter(cfg.archive, "test-sensor", "x", "d")
    for r in recs:
        w.add([r], now=r["ltime"])
        w.commit(r["ltime"])
        w.rotate_if_due(r["ltime"] + 3600)
    d = Path(cfg.archive.dir)
    alerts.import_alerts(d, [alert(r["stime"] + 0.5, raw=str(r["seq"])) for r in recs])
    assert len(alerts.alert_files(d)) == 3
    oldest = archive.list_archives(d)[0]
    archive._unlink_archive(oldest)
    w._prune_alerts()
    w.close(T0 + 99999)
    assert [a["time"] for a in alerts.list_alerts(d)] == [T0 + 3600.5, T0 + 7200.5]


# --- the commands -----------------------------------------------------------------------------

def test_alerts_list_filter_json_and_around(one_session, runner, tmp_path):
    a, b = alert(T0 + 1, sid=7, msg="seven"), alert(T0 + 5000, sid=8, saddr="10.0.0.5", msg="eight")
    alerts.import_alerts(one_session, [a, b])
    d = str(one_session)
    out = runner.invoke(cli, ["alerts", "-r", d, "-M", "json", "-", "sid", "7"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(x) for x in out.output.splitlines()]
    assert [r["id"] for r in rows] == [a.id]
    s = rows[0]["sessions"][0]
    assert (s["stime"], s["saddr"], s["sport"], s["daddr"], s["dport"], s["seq"], s["srcid"]) == \
        (T0, "10.0.0.1", 40000, "198.18.0.1", 80, 1, "sensor1")
    out = runner.invoke(cli, ["alerts", "-r", d, "-c", ",", "-s", "time", "sid", "saddr", "-",
                              "host", "10.0.0.5"])
    assert out.output.splitlines()[1:] == ["2023-11-14 23:36:40.000000,8,10.0.0.5"]
    out = runner.invoke(cli, ["ra", "-r", d, "-n", "-s", "seq", "--around", f"{b.id}:10"])
    assert out.exit_code == 0 and out.output.split()[1:] == []        # nothing near the second
    out = runner.invoke(cli, ["ra", "-r", d, "-n", "-s", "seq", "--around", a.id])
    assert out.output.split()[1:] == ["1"]
    for bad in (["--around", "0123456789abcdef"], ["--around", f"{a.id}:x"]):
        out = runner.invoke(cli, ["ra", "-r", d, *bad])
        assert out.exit_code == 2 and "--around" in out.stderr


def test_alert_and_sid_filters_in_ra_and_racluster(one_session, runner):
    alerts.import_alerts(one_session, [alert(T0 + 1, sid=9)])
    d = str(one_session)
    for cmd in (["ra"], ["racluster", "-m", "saddr", "daddr"], ["rasort", "-m", "stime"]):
        hit = runner.invoke(cli, [*cmd, "-r", d, "-n", "-s", "saddr", "-", "alert", "and", "sid", "9"])
        miss = runner.invoke(cli, [*cmd, "-r", d, "-n", "-s", "saddr", "-", "sid", "10"])
        assert hit.exit_code == 0 and hit.output.split()[1:] == ["10.0.0.1"], (cmd, hit.output)
        assert miss.output.split()[1:] == []
    bad = runner.invoke(cli, ["ra", "-r", d, "-", "sid", "-1"])
    assert bad.exit_code == 2 and "sid" in bad.stderr


def test_import_into_a_missing_store_and_bad_stdin(tmp_path, runner):
    out = runner.invoke(cli, ["alerts", "import", "-d", str(tmp_path / "new"), "-"], input=b"\x00garbage\n")
    assert out.exit_code == 2 and "flowtap:" in out.stderr


def test_alerts_for_records_applies_the_rule_to_each_row(one_session):
    a, far = alert(T0 + 1, sid=1), alert(T0 + 100, sid=2)
    alerts.import_alerts(one_session, [a, far])
    recs = list(query.read_records(one_session))
    other = dict(recs[0], sport=1)
    got = alerts.alerts_for_records(one_session, [recs[0], other])
    assert [[x["sid"] for x in row] for row in got] == [[1], []]
    assert alerts.alerts_for_records(one_session, []) == []


def test_hostile_message_cannot_drive_the_terminal(one_session, runner):
    """A message carries what an outsider put in a packet: escape sequences print as text."""
    alerts.import_alerts(one_session, [alert(T0 + 1, msg="evil \x1b]0;owned\x07 \x1b[2J\nline")])
    out = runner.invoke(cli, ["alerts", "-r", str(one_session), "-s", "msg"])
    assert "\x1b" not in out.output and "\\x1b]0;owned\\x07" in out.output
    out = runner.invoke(cli, ["alerts", "-r", str(one_session), "-c", ",", "-s", "sid", "msg"])
    assert out.output.splitlines()[1].startswith("2000001,evil ")
    out = runner.invoke(cli, ["alerts", "-r", str(one_session), "-M", "json"])
    assert json.loads(out.output)["msg"].startswith("evil \x1b]0;owned")


def test_times_that_name_no_file_are_refused_not_fatal(tmp_path):
    r = alerts.import_alerts(tmp_path, [alert(-5.0), alert(1e300), alert(float("nan")), alert(T0)])
    assert (r.read, r.imported, r.rejected) == (4, 1, 3)


# --- the whole pivot, as the README shows it ----------------------------------------------------

FLOWTAP = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "flowtap")
FIXTURES = Path(__file__).resolve().parent / "alerts"


def flowtap(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWTAP, *args], capture_output=True, text=True, check=check)


def unified2_of_fast_fixture() -> bytes:
    """The dpkt-http alerts as Snort 2 would have logged them in unified2 (the fast fixture's
    alerts, through test_alert_formats' record builder, written from the Snort 2 manual)."""
    from test_alert_formats import u2_event
    from appliance import alert_formats as af

    out = b""
    with open(FIXTURES / "dpkt-http.fast", "rb") as f:
        fast = list(af.read(f, year=2004))
    for i, a in enumerate(fast):
        sec, usec = divmod(round(a.time * 1e6), 1_000_000)
        out += u2_event(7, 1, i + 1, sec, usec, a.sid, a.gid, a.rev, 3, a.priority or 3,
                        a.saddr, a.daddr, a.sport or 0, a.dport or 0, a.proto)
    return out


@pytest.mark.parametrize("fixture", ["dpkt-http.eve.json", "dpkt-http.fast", "dpkt-http.snort3.json",
                                     "dpkt-http.snort3.csv", "unified2"])
def test_each_format_links_every_alert_whose_session_exists(tmp_path, pcaps_dir, fixture):
    """Done when 2: a real capture recorded by `flowtap record`, a hand-written alert file of each
    format imported by `flowtap alerts import`, listed by `flowtap alerts -M json`: the four alerts
    on sessions of the capture link (the session each names), the one on 192.0.2.10 does not."""
    flowtap("record", "-q", "-r", str(pcaps_dir / "basic/dpkt-http.pcap"), "-d", str(tmp_path / "data"))
    store = tmp_path / "data" / "archive"
    path = FIXTURES / fixture
    if fixture == "unified2":
        path = tmp_path / "snort.u2"
        path.write_bytes(unified2_of_fast_fixture())
    imp = flowtap("alerts", "import", "-d", str(tmp_path / "data"), str(path))
    assert imp.stdout.startswith("alerts read 5 imported 5 duplicates 0 linked 4 unlinked 1 bad 0"), imp
    if fixture in ("dpkt-http.fast", "dpkt-http.snort3.csv", "unified2"):
        assert "year 2004 (archives' span)" in imp.stdout or fixture == "unified2"
    rows = [json.loads(x) for x in flowtap("alerts", "-r", str(store), "-M", "json").stdout.splitlines()]
    assert len(rows) == 5
    for row in rows:
        if row["saddr"] == "192.0.2.10":
            assert row["sessions"] == []
            continue
        assert row["sessions"], row
        for s in row["sessions"]:
            ends = {(s["saddr"], s["sport"]), (s["daddr"], s["dport"])}
            assert ends == {(row["saddr"], row["sport"]), (row["daddr"], row["dport"])}
            assert s["stime"] - 30 <= row["time"] <= s["ltime"] + 30
    again = flowtap("alerts", "import", "-d", str(store), str(path))
    assert " imported 0 duplicates 5 " in again.stdout


def test_import_refuses_a_file_with_no_alert(tmp_path):
    (tmp_path / "junk.txt").write_text("hello\nworld\n")
    out = flowtap("alerts", "import", "-d", str(tmp_path), str(tmp_path / "junk.txt"), check=False)
    assert out.returncode == 2 and "junk.txt" in out.stderr
    out = flowtap("alerts", "import", "-d", str(tmp_path), str(tmp_path / "missing"), check=False)
    assert out.returncode == 2 and "missing" in out.stderr


def test_counts_in_sql_equal_counts_in_python(one_session):
    """count_alerts and signature_counts take SQL where the filter bounds only time, Python
    otherwise: both give the same answers (here the filter `not sid 0` forces Python)."""
    batch = [alert(T0 + i, sid=100 + i % 3, priority=1 + i % 2, raw=f"x{i}", msg=f"m{i % 3}")
             for i in range(30)]
    alerts.import_alerts(one_session, batch)
    rng = _filter.parse_time_range(f"{T0 + 5}-{T0 + 20}")
    python = _filter.And(rng, _filter.parse("not sid 0"))
    for ast in (None, rng):
        for prio in (None, 1):
            assert alerts.count_alerts(one_session, ast, priority=prio) == \
                alerts.count_alerts(one_session, python if ast else _filter.parse("not sid 0"), priority=prio)
            assert alerts.signature_counts(one_session, ast, priority=prio) == \
                alerts.signature_counts(one_session, python if ast else _filter.parse("not sid 0"),
                                        priority=prio)
    assert alerts.count_alerts(one_session, rng) == 15            # T0+5 .. T0+19: the end is open
    assert alerts.signature_counts(one_session, limit=1) == [
        {"gid": 1, "sid": 100, "rev": 3, "msg": "m0", "priority": 1, "count": 10}]


def test_a_long_filter_with_alert_is_not_a_recursion(one_session, runner):
    """`alert` at the end of a chain of 5000 hosts: found without recursing 5000 levels deep."""
    alerts.import_alerts(one_session, [alert(T0 + 1)])
    words = " or ".join(f"host 10.1.{i // 250}.{i % 250}" for i in range(5000))
    assert query.uses_alerts(_filter.parse(f"{words} or alert"))
    assert not query.uses_alerts(_filter.parse(words))


def test_a_damaged_archive_does_not_stop_an_import_or_a_listing(tmp_path, pcaps_dir):
    """A flash page gone bad in an archive's host index (which the link searches): the import
    still stores every alert and counts what it can, the listing names the damage and exits 1
    after the alerts before it, and `alert` over archives reports the damaged file like ra does."""
    from conftest import damage_page

    flowtap("record", "-q", "-r", str(pcaps_dir / "large/pcpp-example.pcap"), "-d", str(tmp_path / "d"))
    store = tmp_path / "d" / "archive"
    [path] = archive.list_archives(store)
    recs = list(query.read_records(store))
    picks = [alert(r["stime"], raw=str(r["seq"]), proto=r["proto"], saddr=r["saddr"],
                   sport=r["sport"], daddr=r["daddr"], dport=r["dport"])
             for r in recs[::50] if r["proto"] in (6, 17)]
    os.chmod(path, 0o644)
    damage_page(path, "flows_saddr")
    os.chmod(path, 0o444)
    r = alerts.import_alerts(store, picks)
    assert (r.read, r.imported, r.linked + r.unlinked) == (len(picks), len(picks), len(picks))
    out = flowtap("alerts", "-r", str(store), "-M", "json", check=False)
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr
    if out.returncode == 1:
        assert path.name in out.stderr


# --- import: rows, batches and the link count's thread ------------------------------------------

def hour_rows(directory: Path) -> list[tuple]:
    """Every stored alert of every hour file (file name, then the row but imported_at)."""
    out = []
    for path in alerts.alert_files(directory):
        with sqlite3.connect(path) as conn:
            out += [(path.name, *row[:-1]) for row in conn.execute("SELECT * FROM alerts ORDER BY id")]
    return out


def test_rows_are_the_stores_columns():
    from appliance.alert_types import ROW_FIELDS
    assert alerts.ALERT_NAMES == (*ROW_FIELDS, "imported_at")


def test_small_batches_store_and_count_what_one_batch_does(tmp_path, monkeypatch):
    """Linked, unlinked, repeated and refused alerts over three hours, imported 2 at a time (each
    batch's count on the link thread while the next is written) and all at once: the same rows,
    the same result."""
    rec = build_record(stime=T0, ltime=T0 + 10, community_id="1:good=")
    stores = [write_archive(tmp_path / name, [dict(rec)]) for name in ("small", "one")]
    batch = [alert(T0 + 1), alert(T0 + 2, community_id="1:bad="), alert(T0 + 1), alert(-1.0),
             alert(T0 + 3700), alert(T0 + 5, saddr="192.0.2.1"),
             alert(T0 + 9, saddr="198.18.0.1", sport=80, daddr="10.0.0.1", dport=40000),
             alert(T0 + 7300, proto=1, sport=None, dport=None)]
    monkeypatch.setattr(alerts, "BATCH", 2)
    small = alerts.import_alerts(stores[0], batch)
    monkeypatch.setattr(alerts, "BATCH", 50_000)
    one = alerts.import_alerts(stores[1], batch)
    assert small == one == alerts.ImportResult(read=8, rejected=1, imported=6, duplicates=1, linked=2,
                                               unlinked=4)
    assert hour_rows(stores[0]) == hour_rows(stores[1]) and len(hour_rows(stores[0])) == 6


def test_link_counts_run_one_batch_at_a_time(one_session):
    """The bound on what an import holds: a batch's count is added to the result before the next
    batch's starts, so at most one batch is being counted while one is read and written. (These
    rows are in no hour file, as when retention has just deleted it: counted from memory.)"""
    result = alerts.ImportResult()
    gone = one_session / "alerts-20231114T220000Z.sqlite"
    first = {gone: [row_of_stored(alert(T0 + 1))]}
    second = {gone: [row_of_stored(alert(T0 + 2, raw="2")), row_of_stored(alert(T0 + 3, saddr="192.0.2.1"))]}
    with alerts._LinkCounter(one_session, result) as counter:
        counter.submit(first)
        running = counter.running[0]
        counter.submit(second)
        assert running.done() and (result.linked, result.unlinked) == (1, 0)
        counter.submit({gone: []})              # nothing inserted: nothing to count
    assert (result.linked, result.unlinked) == (2, 1)


def row_of_stored(a: Alert) -> tuple:
    from appliance.alert_types import row_of
    return row_of(a) + (0.0,)


def test_cli_import_of_eve_stores_what_import_alerts_of_read_does(tmp_path, runner):
    """`flowtap alerts import` reads EVE straight into rows: the hour files, the summary and the
    first bad line are those of ``import_alerts(read(...))``, odd and hostile lines included."""
    from test_alert_formats import eve as eve_line, odd_eve_lines
    from appliance import alert_formats as af

    rec = build_record(stime=1084443420.0, ltime=1084443440.0, saddr="145.254.160.237", sport=3372,
                       daddr="65.208.228.223", dport=80, community_id="1:D0Hb5PnRilB52ktTszXCb9PSY8M=")
    stores = [write_archive(tmp_path / name, [dict(rec)]) for name in ("cli", "api")]
    eve = tmp_path / "eve.json"
    eve.write_bytes(b"\n".join([eve_line().encode(), *odd_eve_lines()]) + b"\n")   # detected: EVE
    stats = af.ReadStats()
    with eve.open("rb") as f:
        want = alerts.import_alerts(stores[1], af.read(f, stats=stats))
    gc.enable()                                 # (an `ra` run in this process leaves it off)
    out = runner.invoke(cli, ["alerts", "import", "-d", str(stores[0]), str(eve)])
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[0] == (
        f"alerts read {want.read} imported {want.imported} duplicates {want.duplicates} linked "
        f"{want.linked} unlinked {want.unlinked} bad {stats.bad} skipped {stats.skipped}")
    assert f"line {stats.first_bad[0]}: {stats.first_bad[1]}" in out.stderr
    assert hour_rows(stores[0]) == hour_rows(stores[1]) and want.linked > 0 and want.imported > 10
    assert gc.isenabled()                       # paused for the import only


@pytest.mark.parametrize("fixture", ["dpkt-http.eve.json", "tcpreplay-test.eve.json", "odd"])
def test_import_of_eve_read_in_c_stores_what_python_does(tmp_path, fixture):
    """EVE lines read in C (appliance._alertparse) or in Python: the same hour files, the same
    result and counts, for the fixtures and for the odd and hostile lines."""
    from test_alert_formats import eve as eve_line, need_native, odd_eve_lines
    from appliance import alert_formats as af

    need_native()
    rec = build_record(stime=1084443420.0, ltime=1084443440.0, saddr="145.254.160.237", sport=3372,
                       daddr="65.208.228.223", dport=80, community_id="1:D0Hb5PnRilB52ktTszXCb9PSY8M=")
    path = FIXTURES / fixture
    if fixture == "odd":
        path = tmp_path / "odd.json"
        path.write_bytes(b"\n".join([eve_line().encode(), *odd_eve_lines()]) + b"\n")
    out = []
    for native in (True, False):
        store = write_archive(tmp_path / str(native), [dict(rec)])
        stats = af.ReadStats()
        with path.open("rb") as f:
            result = alerts.import_rows(store, af.read_rows(f, stats=stats, native=native))
        out.append((result, stats, hour_rows(store)))
    assert out[0] == out[1] and out[0][0].imported >= 5
