"""racluster -m over archives merged and printed in C (native/cluster.c through
fastpath.cluster_text) prints byte for byte what the Python clusterer prints, on every shared
capture; where C declines, the Python path prints the same thing as ever."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance import config, fastpath, query, recorder
from appliance.cli import cli

# Key sets and options C takes (each must run in C on some capture).
KEY_SETS = [["saddr", "daddr"], ["saddr"], ["daddr"], ["proto", "dport"], ["saddr/24"],
            ["daddr/16", "proto"], ["saddr/64", "daddr"], ["srcid"], ["none"],
            ["saddr", "daddr", "proto", "sport", "dport"]]
OPTIONS = [["-n"], ["-nn", "-u"], ["-n", "-c", ",", "-L0", "-M", "norep"],
           ["-nn", "-L", "-1", "-s", "stime", "ltime", "dur", "trans", "proto", "saddr", "sport",
            "daddr", "dport", "spkts", "dpkts", "sbytes", "dbytes", "state", "flgs", "dir"],
           ["-n", "-u", "-c", ",", "-s", "seq", "cause", "srcid", "sappbytes", "dappbytes",
            "appbytes", "stos", "dtos", "sttl", "dttl", "smac", "dmac", "svlan", "dvid", "smpls",
            "dmpls", "sflags", "dflags", "synack", "ackdat", "tcprtt", "sretrans", "dloss", "sgap",
            "dgap", "smaxsz", "sminsz", "dmaxsz", "dminsz", "conn_state", "history", "trans"],
           ["-n", "-s", "+trans", "-flgs", "dur:6", "saddr:10"]]
FILTERS = [[], ["-", "tcp"], ["-", "udp or icmp"], ["-", "not tcp and ipv6"]]


@pytest.fixture(scope="module")
def archives(pcaps_dir, tmp_path_factory) -> dict[str, Path]:
    """Every shared capture but malformed/ recorded into its own archive directory."""
    made = {}
    for cap in sorted(p for p in pcaps_dir.rglob("*") if p.suffix in (".pcap", ".pcapng")
                      and "malformed" not in p.relative_to(pcaps_dir).parts):
        out = tmp_path_factory.mktemp("archive") / "archive"
        cfg = config.Config()
        cfg = dataclasses.replace(cfg, archive=dataclasses.replace(
            cfg.archive, dir=str(out), rotate_interval=60, min_free_percent=0))
        assert recorder.Recorder(cfg).record_files([str(cap)]) == []
        made[str(cap.relative_to(pcaps_dir))] = out
    return made


@pytest.fixture
def ran_in_c(monkeypatch):
    """A list that gets True/False per racluster run: whether C printed the output."""
    results: list[bool] = []
    real = fastpath.cluster_text

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]
    monkeypatch.setattr(fastpath, "cluster_text", spy)
    return results


def in_python(runner, monkeypatch, args) -> str:
    """The Python clusterer's output (no C, no SQL GROUP BY)."""
    with monkeypatch.context() as m:
        m.setenv("FLOWTAP_NO_FASTPATH", "1")
        m.setattr(query, "cluster_archives", lambda *a, **k: None)
        res = runner.invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


def in_c(runner, ran_in_c, args) -> tuple[str, bool]:
    res = runner.invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout, ran_in_c[-1]


def test_every_capture_clusters_in_c_as_in_python(runner, monkeypatch, archives, ran_in_c):
    took = set()
    for name, path in archives.items():
        for i, keys in enumerate(KEY_SETS):
            opts = OPTIONS[i % len(OPTIONS)]
            flt = FILTERS[i % len(FILTERS)]
            args = ["racluster", "-m", *keys, *opts, "-r", path, *flt]
            got, c = in_c(runner, ran_in_c, args)
            assert got == in_python(runner, monkeypatch, args), (name, args)
            if c:
                took.add((tuple(keys), tuple(opts)))
    # Every key set ran in C somewhere (a decline everywhere would hide behind equal output).
    assert {k for k, _ in took} == {tuple(k) for k in KEY_SETS}


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("keys", [["saddr", "daddr"], ["proto", "dport"], ["saddr/24"]])
def test_several_files_and_directories_cluster_in_c(runner, monkeypatch, archives, ran_in_c,
                                                    keys, opts):
    many = [archives[n] for n in ("large/pcpp-example.pcap", "large/pcpp-many-protocols.pcap",
                                  "tcp/nfstream-dnp3-long.pcapng", "basic/tcpreplay-test.pcap")]
    assert len(query.archive_files(many[2])) > 1           # rotated every minute: several files
    files = [f for d in many for f in query.archive_files(d)]
    for inputs in (many, files):
        args = ["racluster", "-m", *keys, *opts, "-r", *inputs]
        got, c = in_c(runner, ran_in_c, args)
        assert c, args
        assert got == in_python(runner, monkeypatch, args)


def test_filters_and_time_ranges_run_in_c(runner, monkeypatch, archives, ran_in_c, utc):
    path = archives["large/pcpp-example.pcap"]
    first = query.read_records(path).__next__()
    host = first["saddr"]
    for flt in (["-", "tcp"], ["-", "host", host], ["-", "not", "host", host, "and", "ip"],
                ["-", "src", "port", "53", "or", "dst", "port", "443"], ["-", "pkts", "gt", "3"],
                ["-t", "2000/01/01-2100/01/01"], ["-t", "1970/01/01-1970/01/02"]):
        args = ["racluster", "-m", "saddr", "daddr", "-n", "-r", path, *flt]
        got, c = in_c(runner, ran_in_c, args)
        assert c, flt
        assert got == in_python(runner, monkeypatch, args)


@pytest.mark.parametrize("extra", [
    ["-m", "smac"],                          # a key C does not merge by
    ["-m", "saddr", "-Z", "b"],              # -Z
    ["-m", "saddr", "-M", "json"],           # JSON lines
    ["-m", "saddr", "-L", "5"],              # labels every N records
    ["-m", "saddr", "-N", "o3"],             # -N
    ["-m", "saddr", "-s", "community_id"],   # a field C does not print
    ["-m", "saddr", "daddr"],                # service names (no -n) for TCP/UDP ports
    ["-m", "saddr", "-n", "-", "net", "10.0.0.0/8"],   # a SQL function only Python has
    [],                                      # the default key (correction)
])
def test_what_c_declines_prints_as_before(runner, monkeypatch, archives, ran_in_c, extra):
    path = archives["large/pcpp-example.pcap"]
    args = ["racluster", "-r", path, *extra]
    got = runner.invoke(cli, [str(a) for a in args]).stdout
    assert not any(ran_in_c)
    assert got == in_python(runner, monkeypatch, args)
    assert got


def test_a_capture_among_the_inputs_is_clustered_in_python(runner, monkeypatch, archives, pcaps_dir,
                                                           ran_in_c):
    args = ["racluster", "-m", "saddr", "-n", "-r", archives["large/pcpp-example.pcap"],
            pcaps_dir / "basic/tcpreplay-test.pcap"]
    got = runner.invoke(cli, [str(a) for a in args]).stdout
    assert not any(ran_in_c)
    assert got == in_python(runner, monkeypatch, args)


def test_an_unreadable_input_is_reported_by_the_python_path(runner, archives, tmp_path, ran_in_c):
    bad = tmp_path / "flows-20240101T000000Z.sqlite"
    bad.write_bytes(b"SQLite format 3\0" + b"\0" * 100)
    res = runner.invoke(cli, ["racluster", "-m", "saddr", "-n", "-r",
                              str(archives["large/pcpp-example.pcap"]), str(bad)])
    assert res.exit_code == 1 and "flowtap:" in res.stderr
    assert ran_in_c == [False]
    assert res.stdout


def test_the_c_clusterer_refuses_what_it_was_not_given_to_merge():
    """A printed field the statement does not read, a key C does not merge by, and packet sizes
    without the packet counts their merge needs: refused, never printed blank."""
    from appliance import capture
    with capture.ArchiveCluster([("saddr", None)], ["stime", "ltime", "saddr"]) as c:
        fmt = capture.LineFormat([("bytes", capture.PAD_NONE, capture.SEP_DELIM, 0)])
        with pytest.raises(capture.ClusterDeclined):
            c.finish(fmt)
    with pytest.raises(capture.ClusterDeclined):
        capture.ArchiveCluster([("smac", None)], ["stime", "ltime", "smac"])
    with pytest.raises(capture.ClusterDeclined):
        capture.ArchiveCluster([("saddr", None)], ["stime", "ltime", "saddr", "smaxsz"])
