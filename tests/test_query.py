"""Archives read through SQL (appliance/query.py) give what the capture gives: ra, filters, -t,
racluster -m, rasort; bad inputs fail clearly and do not stop the others."""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from appliance import archive, capture, cluster, config, fields, filter as flt, query, recorder
from appliance.cli import cli

CAPTURES = ["large/pcpp-example.pcap", "large/pcpp-many-protocols.pcap", "large/nfstream-tor.pcapng",
            "basic/tcpreplay-test.pcap", "tcp/nfstream-dnp3-long.pcapng", "large/pcpp-ip-frag.pcap"]
# Every field ra prints, but seq (it follows the order the meter drains records).
ALL_FIELDS = [f for f in fields.FIELDS if f != "seq"]
KEY_SETS = [["saddr", "daddr"], ["saddr/24"], ["proto", "dport"], ["daddr/16", "proto"], ["none"],
            ["srcid"], ["smac", "dmac"], ["state"], ["sttl"], ["flgs"], ["sflags"], ["dur"],
            ["pkts"], ["sport"], ["community_id"], ["saddr", "daddr", "proto", "sport", "dport"]]
FILTERS = [
    "tcp", "udp", "icmp", "arp", "ip6", "ipv4", "not tcp", "proto 17", "port 80", "dst port 443",
    "src port 53 or dst port 53", "portrange 1-1024", "net 10.0.0.0/8", "src net 192.168",
    "not src net 10.0.0.0/8", "(udp or icmp) and not net 10.0.0.0/24", "tcp and not port 80",
    "pkts gt 10", "bytes gte 1000", "src bytes lt 100", "appbytes eq 0", "ttl 64", "dst ttl gt 100",
    "dur gt 1", "vid gt 0", "syn", "synack", "fin", "reset", "src reset", "retrans", "ecn",
    "tcp and syn and not synack", "est", "con", "req", "int", "timeout", "state FIN",
    "cause Status", "not man", "frag", "ether src host 00:00:00:00:00:00",
]


def record(cap: Path, out: Path, rotate_interval: int = 3600) -> Path:
    """Meter ``cap`` into archives under ``out`` (default sensor id, as ``flowtap ra`` uses)."""
    cfg = config.Config()
    cfg = dataclasses.replace(cfg, archive=dataclasses.replace(
        cfg.archive, dir=str(out), rotate_interval=rotate_interval, min_free_percent=0))
    assert recorder.Recorder(cfg).record_files([str(cap)]) == []
    return out


@pytest.fixture(scope="module")
def archived(pcaps_dir, tmp_path_factory):
    """``archived(name, rotate_interval=3600)`` -> the directory of that capture's archives."""
    made: dict[tuple[str, int], Path] = {}

    def get(name: str, rotate_interval: int = 3600) -> Path:
        if (name, rotate_interval) not in made:
            out = tmp_path_factory.mktemp("archive") / "archive"
            made[name, rotate_interval] = record(pcaps_dir / name, out, rotate_interval)
        return made[name, rotate_interval]
    return get


def run(runner, *args, input=None):
    return runner.invoke(cli, [str(a) for a in args], input=input)


def stored(rec: dict) -> tuple:
    return tuple(rec[k] for k in query.RECORD_ORDER if k != "seq")


def top_host(records: list[dict]) -> str:
    return collections.Counter(r["saddr"] for r in records).most_common(1)[0][0]


# --- ra ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CAPTURES)
def test_ra_over_the_archive_prints_what_ra_over_the_capture_prints(runner, pcaps_dir, archived, name):
    args = ["ra", "-n", "-u", "-c", ",", "-L0", "-s", *ALL_FIELDS]
    want = run(runner, *args, "-r", pcaps_dir / name)
    got = run(runner, *args, "-r", archived(name))
    assert got.exit_code == 0, got.stderr
    want_lines, got_lines = want.stdout.splitlines(), got.stdout.splitlines()
    assert got_lines[0] == want_lines[0] and got_lines[0].startswith("SrcId,Cause,StartTime")
    assert sorted(got_lines[1:]) == sorted(want_lines[1:]) and len(got_lines) > 10


def test_records_have_the_keys_of_metered_records_in_their_order(pcaps_dir, archived):
    name = "large/pcpp-example.pcap"
    metered = next(capture.meter_file(str(pcaps_dir / name)))
    rec = next(query.read_records(archived(name)))
    assert list(rec) == list(metered)


@pytest.mark.parametrize("items", [[], ["stime", "saddr", "daddr", "bytes", "dur"], ["state", "tcprtt"]])
def test_ra_fetches_only_the_columns_it_prints(runner, archived, tmp_path, items):
    directory = archived("large/nfstream-tor.pcapng", 60)
    need = fields.keys_read(fields.parse_field_list(items), fields.FormatOptions())
    full = list(query.read_records(directory, flt.parse("tcp or udp")))
    part = list(query.read_records(directory, flt.parse("tcp or udp"), need=need))
    assert part == [{k: r[k] for k in query.RECORD_ORDER if k in need} for r in full] and len(part) > 20
    # What ra prints from the archive equals what it prints from a record stream of every column.
    stream = tmp_path / "all.stream"
    assert run(runner, "ra", "-w", str(stream), "-r", directory).exit_code == 0
    args = ["ra", "-n", "-u", "-c", ",", *(["-s", *items] if items else [])]
    got = run(runner, *args, "-r", directory).stdout
    assert got == run(runner, *args, "-r", stream).stdout and len(got.splitlines()) > 20


def test_every_archive_file_of_a_rotated_directory_is_read(runner, pcaps_dir, archived):
    name = "tcp/nfstream-dnp3-long.pcapng"      # three hours of packet time
    directory = archived(name, rotate_interval=600)
    files = archive.list_archives(directory)
    assert len(files) >= 3
    args = ["ra", "-n", "-u", "-c", ",", "-L0", "-s", *ALL_FIELDS]
    want = sorted(run(runner, *args, "-r", pcaps_dir / name).stdout.splitlines())
    assert sorted(run(runner, *args, "-r", directory).stdout.splitlines()) == want
    # The files one by one, and the data directory (archives under archive/), read the same.
    assert sorted(run(runner, *args, "-L", "-1", "-r", *files).stdout.splitlines()) == \
        [line for line in want if not line.startswith("SrcId,")]
    assert sorted(run(runner, *args, "-r", directory.parent).stdout.splitlines()) == want
    # Files come in name order, rows in rowid order.
    rows = []
    for f in files:
        with archive.open_readonly(f) as conn:
            rows += [stored(dict(zip(query.RECORD_ORDER, r))) for r in conn.execute(
                f"SELECT {', '.join(query.RECORD_ORDER)} FROM {query.source()} ORDER BY rid")]
    assert [stored(r) for r in query.read_records(directory)] == rows


# --- filters in SQL -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["large/pcpp-many-protocols.pcap", "basic/tcpreplay-test.pcap",
                                  "large/nfstream-tor.pcapng"])
def test_filters_in_sql_select_what_the_python_predicate_selects(pcaps_dir, archived, name):
    metered = list(capture.meter_file(str(pcaps_dir / name)))
    host = top_host(metered)
    directory = archived(name)
    matched = 0
    for text in FILTERS + [f"host {host}", f"src host {host} and tcp", f"dst host {host} or udp"]:
        ast = flt.parse(text)
        keep = flt.compile_predicate(ast)
        want = sorted((stored(r) for r in metered if keep(r)), key=repr)
        got = sorted((stored(r) for r in query.read_records(directory, ast)), key=repr)
        assert got == want, text
        matched += bool(want)
    assert matched > len(FILTERS) // 2


def test_time_range_in_sql_selects_what_the_capture_selects(runner, pcaps_dir, archived, utc):
    name = "tcp/nfstream-dnp3-long.pcapng"
    directory = archived(name, rotate_interval=600)
    metered = list(capture.meter_file(str(pcaps_dir / name)))
    long = max(metered, key=lambda r: r["dur"])
    assert long["dur"] > 10
    lo = int(long["stime"] + long["dur"] / 2)
    hi = lo + 600
    for spec in (f"{lo}-{hi}", f"c{lo}-{hi}", f"n{lo}-{hi}", f"x{lo}-{hi}"):
        ast = flt.parse_time_range(spec)
        keep = flt.compile_predicate(ast)
        want = sorted((stored(r) for r in metered if keep(r)), key=repr)
        got = sorted((stored(r) for r in query.read_records(directory, ast)), key=repr)
        assert got == want, spec
    # A record that began before the range and ended in it is selected (mode i).
    spanning = [r for r in metered if r["stime"] < lo <= r["ltime"]]
    assert spanning
    args = ["ra", "-n", "-u", "-c", ",", "-L0", "-s", *ALL_FIELDS, "-t", f"{lo}-{hi}"]
    want = run(runner, *args, "-r", pcaps_dir / name, "-", "tcp").stdout
    got = run(runner, *args, "-r", directory, "-", "tcp").stdout
    assert sorted(got.splitlines()) == sorted(want.splitlines()) and len(got.splitlines()) > 1


def _plan(path: Path, text: str, time_range: str | None = None) -> list[str]:
    ast = flt.parse(text) if text else None
    if time_range:
        span = flt.parse_time_range(time_range)
        ast = span if ast is None else flt.And(span, ast)
    return query.explain(path, ast)


def test_time_ranges_and_hosts_search_an_index(pcaps_dir, archived):
    name = "large/pcpp-many-protocols.pcap"
    [path] = [p for p in archive.list_archives(archived(name)) if p.name.startswith("flows-2015")]
    with archive.open_readonly(path) as conn:
        first, last = conn.execute("SELECT min(stime), max(ltime) FROM flows").fetchone()
    mid = (first + last) / 2
    rng = f"{mid:.0f}-{mid + 5:.0f}"
    for text, time_range, index in (("", rng, "flows_stime"), ("tcp and port 80", rng, "flows_stime"),
                                    ("host 10.0.0.1", rng, "flows_"),
                                    ("host 10.0.0.1", None, "flows_saddr")):
        plan = _plan(path, text, time_range)
        assert any(f"USING INDEX {index}" in line for line in plan), plan
        assert not any(line.startswith("SCAN flows") for line in plan), plan
    assert any(line.startswith("SCAN flows") for line in _plan(path, "tcp")), "sanity: no range"
    assert any(line.startswith("SCAN flows") for line in query.explain(path, None, indexed=False))


def test_archives_outside_the_range_are_not_searched(runner, archived):
    directory = archived("tcp/nfstream-dnp3-long.pcapng", rotate_interval=600)
    files = archive.list_archives(directory)
    with archive.open_readonly(files[0]) as conn:
        last = archive.read_info(conn)["last_ltime"]
    ast = flt.parse_time_range(f"{int(last) + 1}-{int(last) + 2}")
    assert query.explain(files[0], ast) == ["(archive skipped: its time span misses the range)"]
    result = run(runner, "ra", "-t", "2001/01/01", "-r", directory)
    assert result.exit_code == 0 and result.stdout == ""


def test_the_open_archive_is_read_too(tmp_path, pcaps_dir):
    cfg = config.Config()
    cfg = dataclasses.replace(cfg, archive=dataclasses.replace(cfg.archive, dir=str(tmp_path),
                                                               min_free_percent=0))
    recs = list(capture.meter_file(str(pcaps_dir / "large/pcpp-example.pcap")))
    writer = archive.ArchiveWriter(cfg.archive, "s", "x", "d")
    writer.add(recs, now=recs[-1]["ltime"])
    writer.commit(recs[-1]["ltime"])
    try:
        ast = flt.parse_time_range(f"{int(recs[0]['stime'])}-{int(recs[0]['stime']) + 3}")
        keep = flt.compile_predicate(ast)
        got = [stored(r) for r in query.read_records(tmp_path, ast)]
        assert sorted(got, key=repr) == sorted((stored(r) for r in recs if keep(r)), key=repr)
        assert got
    finally:
        writer.close()


def test_a_time_limit_stops_a_long_query(archived, monkeypatch):
    monkeypatch.setattr(query, "PROGRESS_STEPS", 100)
    directory = archived("large/pcpp-many-protocols.pcap")
    with pytest.raises(query.QueryTimeout):
        list(query.read_records(directory, flt.parse("not tcp"), time_limit=-1))
    with pytest.raises(query.QueryTimeout):
        query.cluster_archives([directory], cluster.parse_keys(["saddr"]), time_limit=-1)
    assert list(query.read_records(directory, flt.parse("tcp"), time_limit=60))


def test_set_time_limit_interrupts_a_statement(archived, monkeypatch):
    monkeypatch.setattr(query, "PROGRESS_STEPS", 100)
    [path] = [p for p in archive.list_archives(archived("large/pcpp-many-protocols.pcap"))
              if p.name.startswith("flows-2015")]
    conn = query.connect(path)
    try:
        query.set_time_limit(conn, -1)
        with pytest.raises(sqlite3.OperationalError, match="interrupt"):
            conn.execute("SELECT count(*) FROM flows AS a, flows AS b").fetchone()
        query.set_time_limit(conn, None)
        assert conn.execute("SELECT count(*) FROM flows").fetchone()[0] > 0
    finally:
        conn.close()


def test_time_bounds_come_from_the_conjuncts_only():
    ast = flt.And(flt.parse_time_range("1700000000-1700003600"), flt.parse("stime gt 1700000100"))
    b = query.TimeBounds.of(ast)
    assert (b.stime_lo, b.stime_hi, b.ltime_lo) == (1700000100, 1700003600, 1700000000)
    assert query.TimeBounds.of(flt.parse("stime gt 5 or tcp")) == query.TimeBounds()
    assert query.TimeBounds.of(flt.parse_time_range("x1700000000-1700003600")) == query.TimeBounds()
    assert b.misses(1700003601, 1700009000) and b.misses(1600000000, 1700000099)
    assert not b.misses(1600000000, 1700000200)


def test_json_and_stream_output_over_the_archive(runner, pcaps_dir, archived):
    name = "large/pcpp-example.pcap"
    for args in (["-M", "json", "-s", *ALL_FIELDS], ["-w", "-"]):
        want = run(runner, "ra", *args, "-r", pcaps_dir / name).stdout
        got = run(runner, "ra", *args, "-r", archived(name)).stdout
        # the stream carries seq; both orders are the meter's drain order here
        assert got == want and len(got.splitlines()) > 10


def test_identifiers_come_only_from_the_whitelist():
    assert query.ident("pkts") == "pkts" and query.ident("saddr") == "saddr"
    assert "(spkts + dpkts) AS pkts" in query.source()
    with pytest.raises(ValueError):
        query.ident("saddr; DROP TABLE flows")


# --- racluster and rasort -----------------------------------------------------------------------

def _python_cluster(paths, keys, ast=None, norep=False):
    c = cluster.Clusterer(keys, norep=norep, correct=False)
    for p in paths:
        for r in query.read_records(p, ast):
            c.add(r)
    return list(c.results())


@pytest.mark.parametrize("name, rotate", [("large/pcpp-many-protocols.pcap", 3600),
                                          ("large/nfstream-tor.pcapng", 60),
                                          ("tcp/nfstream-dnp3-long.pcapng", 600),
                                          ("large/pcpp-ip-frag.pcap", 3600),
                                          ("basic/tcpreplay-test.pcap", 3600)])
def test_racluster_in_sql_makes_exactly_the_python_merge(archived, name, rotate):
    directory = archived(name, rotate)
    for keys in KEY_SETS:
        parsed = cluster.parse_keys(keys)
        for text in (None, "tcp", "not udp"):
            ast = flt.parse(text) if text else None
            got = query.cluster_archives([directory], parsed, ast, norep=True)
            assert got is not None, (keys, text)
            got = list(got)
            want = _python_cluster([directory], parsed, ast, norep=True)
            assert got == want, (keys, text)
            assert [list(r) for r in got] == [list(r) for r in want]


@pytest.mark.parametrize("items, zflags", [([], ""), (["stime", "saddr", "daddr", "pkts", "bytes"], ""),
                                           (["state", "flgs", "dir"], "b"),
                                           (["smaxsz", "dminsz", "tcprtt", "stos", "smac", "svid"], ""),
                                           (["dur", "trans", "cause", "sappbytes", "history"], "")])
def test_racluster_in_sql_merges_only_the_printed_columns_and_gets_them_right(archived, items, zflags):
    directory = archived("large/nfstream-tor.pcapng", 60)
    need = fields.keys_read(fields.parse_field_list(items), fields.FormatOptions(zflags=zflags))
    for keys in KEY_SETS:
        parsed = cluster.parse_keys(keys)
        full = list(query.cluster_archives([directory], parsed, norep=True))
        part = list(query.cluster_archives([directory], parsed, norep=True, need=need))
        assert [{k: r[k] for k in need} for r in part] == [{k: r[k] for k in need} for r in full]
        skipped = set(query.RECORD_ORDER) - need - {k.key for k in parsed} - {"stime", "ltime"}
        for path in archive.list_archives(directory):   # what each file's GROUP BY computed
            groups = query.cluster_file(path, parsed, None, need=need | {"stime", "ltime"})
            filled = {k for _, rec, _ in groups for k in skipped if k in rec}
            assert not filled, (keys, filled)


@pytest.mark.parametrize("name", ["large/pcpp-example.pcap", "large/pcpp-many-protocols.pcap",
                                  "large/nfstream-tor.pcapng"])
@pytest.mark.parametrize("keys", [["saddr", "daddr"], ["saddr/24"], ["proto", "dport"], []])
def test_racluster_over_the_archive_prints_what_it_prints_over_the_capture(runner, pcaps_dir,
                                                                          archived, name, keys):
    args = ["racluster", "-M", "norep", *(["-m", *keys] if keys else []), "-n", "-u", "-c", ",",
            "-L0", "-s", *ALL_FIELDS, "trans"]
    want = run(runner, *args, "-r", pcaps_dir / name)
    got = run(runner, *args, "-r", archived(name, 60))
    assert got.exit_code == 0, got.stderr
    if keys:
        assert got.stdout == want.stdout            # sorted by key: the same order
    else:                                           # by last update: file order matters
        assert sorted(got.stdout.splitlines()) == sorted(want.stdout.splitlines())
    assert len(got.stdout.splitlines()) > 1


@pytest.mark.parametrize("name", ["large/pcpp-example.pcap", "large/nfstream-tor.pcapng"])
def test_rasort_and_the_pipe_over_the_archive(runner, pcaps_dir, archived, name):
    directory = archived(name, 60)
    sort = ["rasort", "-m", "bytes", "saddr", "-n", "-u", "-c", ",", "-L0", "-s", *ALL_FIELDS]
    want = run(runner, *sort, "-r", pcaps_dir / name).stdout
    assert run(runner, *sort, "-r", directory).stdout == want
    merge = ["racluster", "-M", "norep", "-m", "saddr", "daddr", "-u", "-n"]
    piped = {}
    for src in (pcaps_dir / name, directory):
        stream = run(runner, *merge, "-r", src, "-w", "-", "-", "tcp").stdout
        piped[src] = run(runner, "rasort", "-m", "bytes", "-L0", "-n", input=stream)
        assert piped[src].exit_code == 0
    assert piped[directory].stdout == piped[pcaps_dir / name].stdout
    assert len(piped[directory].stdout.splitlines()) > 2


def test_racluster_over_an_archive_and_a_capture_together(runner, pcaps_dir, archived):
    # Not every input is an archive: the Python clusterer merges them all.
    one, two = "large/pcpp-example.pcap", "basic/tcpreplay-test.pcap"
    args = ["racluster", "-M", "norep", "-m", "saddr", "-n", "-u", "-c", ",", "-s", *ALL_FIELDS]
    want = run(runner, *args, "-r", pcaps_dir / one, pcaps_dir / two)
    got = run(runner, *args, "-r", archived(one), pcaps_dir / two)
    assert got.exit_code == 0 and got.stdout == want.stdout and len(got.stdout.splitlines()) > 5


def _writable_copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    os.chmod(dst, 0o644)
    return dst


def test_groups_sql_cannot_merge_exactly_fall_back_to_python(tmp_path, runner, archived):
    [src] = archive.list_archives(archived("large/pcpp-example.pcap"))
    path = _writable_copy(src, tmp_path / src.name)
    with sqlite3.connect(path) as conn:     # Argus merges s and d in one flgs column into '*'
        conn.execute("UPDATE flows SET flgs = CASE rowid % 2 WHEN 0 THEN ' e    d  ' "
                     "ELSE ' e    s  ' END")
    keys = cluster.parse_keys(["saddr", "daddr"])
    assert query.cluster_archives([path], keys) is None
    args = ["racluster", "-m", "saddr", "daddr", "-n", "-u", "-c", ",", "-s", "saddr", "daddr",
            "flgs", "trans"]
    result = run(runner, *args, "-r", path)
    want = _python_cluster([path], keys)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1:] == [f"{r['saddr']},{r['daddr']},{r['flgs']:<10},{r['trans']}"
                                              for r in want]
    assert any("*" in r["flgs"] for r in want)


# --- bad inputs ---------------------------------------------------------------------------------

@pytest.fixture
def bad_inputs(tmp_path):
    corrupt = tmp_path / "flows-20200101T000000Z.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    return corrupt, foreign


@pytest.mark.parametrize("command", [["ra"], ["racluster", "-m", "saddr"], ["racluster"]])
def test_unreadable_archives_fail_clearly_and_the_others_are_read(runner, archived, bad_inputs,
                                                                  command):
    corrupt, foreign = bad_inputs
    good = archived("large/pcpp-example.pcap")
    args = [*command, "-n", "-L", "-1", "-s", "saddr", "daddr"]
    want = run(runner, *args, "-r", good).stdout
    result = run(runner, *args, "-r", corrupt, foreign, "/nonexistent/flows.sqlite", good)
    assert result.exit_code == 1
    assert result.stdout == want and want
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"flowtap: {corrupt}: not a flowtap archive (file is not a database")
    assert lines[1].startswith(f"flowtap: {foreign}: not a flowtap archive (no such table")
    assert lines[2] == "flowtap: /nonexistent/flows.sqlite: No such file or directory"
    assert len(lines) == 3


def test_a_damaged_file_in_a_directory_does_not_hide_the_others(runner, tmp_path, archived,
                                                                bad_inputs):
    corrupt, _ = bad_inputs
    directory = tmp_path / "dir"
    shutil.copytree(archived("tcp/nfstream-dnp3-long.pcapng", 600), directory)
    files = archive.list_archives(directory)
    shutil.copy(corrupt, directory / files[1].name.replace(".sqlite", "-1.sqlite"))
    want = run(runner, "ra", "-n", "-L", "-1", "-r", *files).stdout
    result = run(runner, "ra", "-n", "-L", "-1", "-r", directory)
    assert result.exit_code == 1 and result.stdout == want
    assert result.stderr.startswith(f"flowtap: {directory}: {files[1].name[:-7]}-1.sqlite: "
                                    "not a flowtap archive")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(runner, "ra", "-r", empty)
    assert result.exit_code == 1
    assert result.stderr == f"flowtap: {empty}: no flowtap archives (flows-*.sqlite) in this directory\n"


def test_an_archive_from_a_newer_flowtap_is_refused(runner, tmp_path, archived):
    [src] = archive.list_archives(archived("large/pcpp-example.pcap"))
    path = _writable_copy(src, tmp_path / src.name)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE archive_info SET value = '99' WHERE key = 'schema_version'")
    result = run(runner, "ra", "-r", path)
    assert result.exit_code == 1
    assert result.stderr == (f"flowtap: {path}: archive schema version 99 is not one this flowtap "
                             f"reads (up to {archive.SCHEMA_VERSION})\n")
