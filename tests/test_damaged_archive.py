"""An archive with a damaged page (flash cards do that) still gives every record SQLite can reach:
ra, racluster and rasort print the records before and after the damage, then name the records
that could not be read and exit 1; a damaged index costs nothing but a warning."""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import archive
from conftest import damage_page

CAPTURE = "large/pcpp-example.pcap"      # 136 records on 9 leaf pages of flows
FLOWTAP = [sys.executable, "-m", "appliance.cli"]
LOST = re.compile(r"damaged: (\d+) records could not be read \(rowids (\d+)-(\d+); (.+)\); "
                  r"the other records were read$")


def flowtap(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*FLOWTAP, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def good(pcaps_dir, tmp_path_factory) -> Path:
    """One closed archive of CAPTURE, recorded by ``flowtap record``."""
    out = tmp_path_factory.mktemp("good")
    r = flowtap("record", "-q", "-r", pcaps_dir / CAPTURE, "-d", out)
    assert r.returncode == 0, r.stderr
    (path,) = archive.list_archives(out / "archive")
    return path


def damaged_copy(good: Path, directory: Path, **how) -> Path:
    """A copy of ``good`` in ``directory`` with one page damaged (``conftest.damage_page``)."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / good.name
    shutil.copy(good, copy)
    damage_page(copy, **how)
    return copy


def records(*args) -> tuple[list[dict], subprocess.CompletedProcess]:
    r = flowtap("ra", "-M", "json", *args)
    return [json.loads(line) for line in r.stdout.splitlines()], r


def lost_range(stderr: str) -> tuple[int, int]:
    (line,) = stderr.splitlines()
    m = LOST.search(line)
    assert m, line
    n, a, b = map(int, m.groups()[:3])
    assert n == b - a + 1
    return a, b


@pytest.mark.parametrize("keep_header", [False, True], ids=["page-garbage", "cells-garbage"])
def test_ra_prints_every_record_around_a_damaged_page(good, tmp_path, keep_header):
    everything, r = records("-r", good)
    assert r.returncode == 0 and r.stderr == "" and len(everything) == 136
    bad = damaged_copy(good, tmp_path, keep_header=keep_header)

    got, r = records("-r", bad)

    assert r.returncode == 1
    assert r.stderr.startswith(f"flowtap: {bad}: damaged: ")
    a, b = lost_range(r.stderr)
    assert 1 < a <= b < 136 and b - a < 40          # one leaf page's records, inside the file
    assert got == everything[:a - 1] + everything[b:]  # all before and all after, in order


def test_a_filter_reports_only_what_could_not_be_read(good, tmp_path):
    bad = damaged_copy(good, tmp_path)
    everything, _ = records("-r", good)
    _, r = records("-r", bad)
    a, b = lost_range(r.stderr)
    lost = everything[a - 1:b]

    shorter = 0
    for expr in ("tcp", "udp", "not tcp"):
        want, _ = records("-r", good, "-", expr)
        got, r = records("-r", bad, "-", expr)
        assert r.returncode == 1
        assert lost_range(r.stderr) == (a, b)       # the same rows, whatever the filter keeps
        assert got == [x for x in want if x not in lost]
        shorter += len(got) < len(want)
    assert shorter                                  # some filter did lose matching records


def test_a_damaged_archive_does_not_hide_the_rest_of_a_directory(good, pcaps_dir, tmp_path):
    other = tmp_path / "other"
    assert flowtap("record", "-q", "-r", pcaps_dir / "basic/dpkt-http.pcap", "-d", other).returncode == 0
    (other_file,) = archive.list_archives(other / "archive")
    directory = tmp_path / "dir"
    bad = damaged_copy(good, directory)
    shutil.copy(other_file, directory / other_file.name)
    alone, _ = records("-r", other_file)
    damaged_alone, _ = records("-r", bad)

    got, r = records("-r", directory)

    assert r.returncode == 1
    assert r.stderr.startswith(f"flowtap: {directory}: {bad.name}: damaged: ")
    want = damaged_alone + alone if bad.name < other_file.name else alone + damaged_alone
    assert got == want and alone                    # files in name order, both read


def test_racluster_and_rasort_merge_what_could_be_read(good, tmp_path):
    bad = damaged_copy(good, tmp_path / "bad")
    _, r = records("-r", bad)
    a, b = lost_range(r.stderr)
    # The same archive with exactly those records deleted: what the damaged one must give.
    pruned = tmp_path / "pruned" / good.name
    pruned.parent.mkdir()
    shutil.copy(good, pruned)
    pruned.chmod(0o644)
    with sqlite3.connect(pruned) as conn:
        conn.execute("DELETE FROM flows WHERE rowid BETWEEN ? AND ?", (a, b))
        conn.execute("UPDATE archive_info SET value = json(?) WHERE key = 'records'",
                     (str(136 - (b - a + 1)),))
    pruned.chmod(0o444)

    for args in (["racluster", "-n"], ["racluster", "-n", "-m", "saddr", "daddr"],
                 ["racluster", "-n", "-m", "proto", "dport", "-s", "proto", "dport", "trans", "pkts"],
                 ["rasort", "-n", "-m", "bytes"]):
        want = flowtap(*args, "-r", pruned)
        got = flowtap(*args, "-r", bad)
        assert want.returncode == 0, want.stderr
        assert got.returncode == 1 and lost_range(got.stderr.removeprefix(f"flowtap: {bad}: ")) == (a, b)
        assert got.stdout == want.stdout and got.stdout.count("\n") > 5


def test_a_damaged_index_costs_only_a_warning(good, tmp_path):
    with sqlite3.connect(f"file:{good}?mode=ro&immutable=1", uri=True) as conn:
        host = conn.execute("SELECT saddr FROM flows GROUP BY saddr ORDER BY count(*) DESC").fetchone()[0]
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT rowid FROM flows WHERE saddr = ? OR daddr = ?",
                            (host, host)).fetchall()
    assert any("flows_saddr" in row[3] for row in plan)
    want, _ = records("-r", good, "-", f"host {host}")
    bad = damaged_copy(good, tmp_path, name="flows_saddr", which=0)

    got, r = records("-r", bad, "-", f"host {host}")

    assert r.returncode == 0
    assert "damaged index" in r.stderr and str(bad) in r.stderr
    assert got == want and len(want) > 10


def test_the_end_of_the_table_damaged(good, tmp_path):
    """The last leaf page is garbage: everything before it, and its records named as lost."""
    everything, _ = records("-r", good)
    bad = damaged_copy(good, tmp_path, which=-1)

    got, r = records("-r", bad)

    assert r.returncode == 1
    a, b = lost_range(r.stderr)
    assert b == 136 and got == everything[:a - 1]
