"""flowtap ra / racluster / rasort on real captures, through click's CliRunner."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from appliance.capture import meter_file
from appliance.cli import argus_argv, cli

TUTORIAL = "stime ltime proto saddr sport daddr dport spkts dpkts sbytes dbytes sappbytes dappbytes state"
HEADER = ("StartTime,LastTime,Proto,SrcAddr,Sport,DstAddr,Dport,SrcPkts,DstPkts,SrcBytes,DstBytes,"
          "SAppBytes,DAppBytes,State")


@pytest.fixture
def pcap(pcaps_dir):
    """A small mixed capture: TCP, UDP, ICMP, ARP, VLAN, MPLS, IPv6 (179 packets)."""
    return str(pcaps_dir / "basic" / "tcpreplay-test.pcap")


def run(runner, *args, input=None):
    return runner.invoke(cli, list(args), input=input)


# --- argv in Argus style ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["-s", "a", "b", "-n"], ["-s", "a", "-s", "b", "-n"]),
    (["-s", "stime", "-dur", "+2srcid", "-u"], ["-s", "stime", "-s", "-dur", "-s", "+2srcid", "-u"]),
    (["-r", "x", "y", "-", "tcp", "and", "port", "80"], ["-r", "x", "-r", "y", "--", "tcp", "and", "port", "80"]),
    (["-r", "-", "-w", "-", "--", "udp"], ["-r", "-", "-w", "-", "--", "udp"]),
    (["-L", "-1", "-nn", "-L0"], ["-L", "-1", "-nn", "-L0"]),
    (["-m", "saddr/24", "daddr", "-M", "norep", "json"], ["-m", "saddr/24", "-m", "daddr", "-M", "norep", "-M", "json"]),
    (["-t", "-1h", "-", "not", "man"], ["-t", "-1h", "--", "not", "man"]),
    (["-c", ",", "-s", "saddr", "-"], ["-c", ",", "-s", "saddr", "--"]),
])
def test_argus_argv(argv, expected):
    assert argus_argv(argv) == expected


# --- help and usage errors --------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["ra"], ["racluster"], ["rasort"]])
def test_help_ends_with_an_example(runner, args):
    result = run(runner, *args, "--help")
    assert result.exit_code == 0
    tail = result.stdout.rstrip().split("Example:")
    assert len(tail) == 2 and "flowtap " in tail[1] and "Options:" not in tail[1]


@pytest.mark.parametrize("command", ["ra", "racluster", "rasort"])
def test_bad_filter_is_one_line_naming_the_column(runner, command):
    result = run(runner, command, "-r", "-", "-n", "-", "tcp", "and", "port", "x")
    assert result.exit_code == 2
    assert result.stderr == "flowtap: filter error at column 14: expected a port number, got 'x'\n"
    assert result.stdout == ""


@pytest.mark.parametrize("args, text", [
    (["ra", "-s", "stime", "bogus"], "unknown field 'bogus'"),
    (["ra", "-M", "xml"], "unknown -M mode 'xml'"),
    (["ra", "-M", "norep"], "unknown -M mode 'norep'"),
    (["ra", "-Z", "x"], "'x' is not one of"),
    (["ra", "-N", "x"], "is not N, START-END or START+N"),
    (["racluster", "-m", "bogus"], "unknown field 'bogus'"),
    (["rasort", "-m", "bogus"], "unknown field 'bogus'"),
    (["ra", "--bogus"], "No such option"),
])
def test_usage_errors_exit_2(runner, args, text):
    result = run(runner, *args, input="")
    assert result.exit_code == 2
    assert text in result.stderr


def test_bad_time_range_exits_2(runner):
    result = run(runner, "ra", "-t", "2024/99/01", input="")
    assert result.exit_code == 2
    assert result.stderr.startswith("flowtap: -t '2024/99/01': bad time") and result.stderr.count("\n") == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, token, code, text", [
    (["-S", "http://127.0.0.1:9", "-r", "x"], "t", 2, "-S (a sensor's live stream) and -r (files) cannot be combined"),
    (["-S", "http://127.0.0.1:9"], None, 2, "-S needs an API token: --token-file FILE or FLOWTAP_TOKEN"),
    (["-S", "http://127.0.0.1:9", "--token-file", "/nonexistent/token"], None, 2,
     "flowtap: --token-file /nonexistent/token: No such file or directory\n"),
    (["-S", "http://127.0.0.1:9"], "two words", 2, "the API token has spaces"),
    (["-S", "ftp://sensor"], "t", 2, "flowtap: ftp://sensor: give the sensor as https://HOST[:PORT]"),
    (["-S", "https://sensor:99999"], "t", 2, "flowtap: https://sensor:99999: not a valid port\n"),
    (["-S", "https://admin:pw@sensor"], "t", 2, "no user, query or fragment"),
    (["-S", "http://127.0.0.1:{closed}"], "t", 1, "flowtap: http://127.0.0.1:{closed}: cannot attach: connection refused\n"),
])
def test_live_stream_usage_and_connection_errors(runner, args, token, code, text):
    """`ra -S` (end to end with a sensor in tests/test_stream.py): what is refused before or at
    connecting; only loopback is contacted."""
    port = closed_port()
    args = [a.replace("{closed}", str(port)) for a in args]
    result = runner.invoke(cli, ["ra", *args], env={"FLOWTAP_TOKEN": token})
    assert result.exit_code == code
    assert text.replace("{closed}", str(port)) in result.stderr and result.stdout == ""


def test_stdin_must_be_a_capture_or_a_record_stream(runner):
    result = run(runner, "ra", input="hello\n")
    assert result.exit_code == 1
    assert result.stderr == ("flowtap: -: neither a capture (pcap, pcapng) nor a flowtap record "
                             "stream (write one with `-w -`)\n")
    result = run(runner, "ra", input="")
    assert result.exit_code == 1
    assert result.stderr == "flowtap: -: not a flowtap record stream (write one with `-w -`)\n"


# --- on a real capture ------------------------------------------------------------------------

def test_tutorial_csv(runner, pcap):
    records = list(meter_file(pcap))
    result = run(runner, "ra", "-n", "-u", "-c", ",", "-L0", "-r", pcap, "-s", *TUTORIAL.split())
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == HEADER
    assert len(lines) == 1 + len(records) > 20
    first = records[0]
    assert lines[1] == ",".join([f"{first['stime']:.6f}", f"{first['ltime']:.6f}", "tcp",
                                 first["saddr"], str(first["sport"]), first["daddr"],
                                 str(first["dport"]), *(str(first[k]) for k in (
                                     "spkts", "dpkts", "sbytes", "dbytes", "sappbytes",
                                     "dappbytes")), first["state"]])


def test_filter_selects(runner, pcap):
    result = run(runner, "ra", "-nn", "-c", ",", "-L", "-1", "-r", pcap, "-s", "proto", "dport",
                 "-", "udp", "and", "dst", "port", "53")
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert rows and set(rows) == {"17,53"}
    tcp = run(runner, "ra", "-q", "-r", pcap, "-", "tcp").stderr
    assert f" records {sum(r['proto'] == 6 for r in meter_file(pcap))} " in tcp


def test_quiet_prints_one_summary_line(runner, pcap):
    stats = {}
    n = sum(1 for _ in meter_file(pcap, stats_out=stats))
    result = run(runner, "ra", "-q", "-r", pcap)
    assert result.exit_code == 0 and result.stdout == ""
    errors = sum(stats["decode_errors"].values())
    assert result.stderr == f"packets 179 records {n} evicted {stats['evicted']} errors {errors}\n"


def test_record_count_and_time_range(runner, pcap, utc):
    n = sum(1 for _ in meter_file(pcap))
    three = run(runner, "ra", "-n", "-L", "-1", "-N", "3", "-r", pcap)
    assert len(three.stdout.splitlines()) == 3
    some = run(runner, "ra", "-n", "-L", "-1", "-N", "2-4", "-r", pcap)
    assert some.stdout.splitlines() == three.stdout.splitlines()[1:] + \
        run(runner, "ra", "-n", "-L", "-1", "-N", "4", "-r", pcap).stdout.splitlines()[3:]
    day = run(runner, "ra", "-q", "-t", "2010/07/07", "-r", pcap)
    assert f" records {n} " in day.stderr
    other = run(runner, "ra", "-t", "2011", "-r", pcap)
    assert other.exit_code == 0 and other.stdout == ""


def test_argus_tutorial_commands(runner, pcap):
    ra = run(runner, "ra", "-u", "-Z", "b", "-L0", "-n", "-r", pcap, "-s", "stime", "proto",
             "saddr", "sport", "daddr", "dport", "spkts", "sappbytes", "dpkts", "dappbytes",
             "state", "-", "tcp")
    assert ra.exit_code == 0
    lines = ra.stdout.splitlines()
    assert lines[0].split() == ["StartTime", "Proto", "SrcAddr", "Sport", "DstAddr", "Dport",
                                "SrcPkts", "SAppBytes", "DstPkts", "DAppBytes", "State"]
    tcp = sum(r["proto"] == 6 for r in meter_file(pcap))
    assert len(lines) == 1 + tcp and all(" tcp " in line for line in lines[1:])
    cl = run(runner, "racluster", "-L0", "-M", "norep", "-m", "saddr", "daddr", "-u", "-n",
             "-r", pcap, "-s", "saddr", "daddr", "trans", "pkts", "-c", ",", "-", "tcp")
    assert cl.exit_code == 0
    rows = [r.split(",") for r in cl.stdout.splitlines()[1:]]
    assert {r[2] for r in rows} == {"0"}
    assert sum(int(r[3]) for r in rows) == sum(r["pkts"] for r in meter_file(pcap) if r["proto"] == 6)


def test_json_lines(runner, pcap):
    result = run(runner, "ra", "-M", "json", "-r", pcap, "-s", "saddr", "dport", "bytes")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == sum(1 for _ in meter_file(pcap))
    assert set(rows[0]) == {"saddr", "dport", "bytes"}


def test_stream_round_trip_and_pipeline(runner, pcap):
    direct = run(runner, "ra", "-n", "-u", "-c", ",", "-r", pcap).stdout
    stream = run(runner, "ra", "-r", pcap, "-w", "-")
    assert stream.exit_code == 0 and stream.stdout.startswith('{"flowtap":"records"')
    again = run(runner, "ra", "-n", "-u", "-c", ",", "-r", "-", input=stream.stdout)
    assert again.exit_code == 0 and again.stdout == direct
    merged = run(runner, "racluster", "-r", pcap, "-w", "-").stdout
    ranked = run(runner, "rasort", "-m", "bytes", "-s", "bytes", "trans", "-c", ",", "-L", "-1",
                 input=merged)
    sizes = [int(line.split(",")[0]) for line in ranked.stdout.splitlines()]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) > 1


def test_stream_file_is_recognised(runner, pcap, tmp_path):
    path = tmp_path / "records.jsonl"
    assert run(runner, "ra", "-r", pcap, "-w", str(path)).exit_code == 0
    n = sum(1 for _ in meter_file(pcap))
    assert run(runner, "ra", "-q", "-r", str(path)).stderr == f"packets 0 records {n} evicted 0 errors 0\n"


def _readable(path):
    """The records meter_file yields before it raises for a damaged file."""
    from appliance.capture import CaptureError
    got = []
    with pytest.raises(CaptureError):
        for r in meter_file(path):
            got.append(r)
    return got


def test_truncated_capture_prints_what_was_read_then_fails(runner, pcaps_dir):
    path = str(pcaps_dir / "malformed" / "pcpp-truncated-file.pcap")
    result = run(runner, "ra", "-n", "-L", "-1", "-r", path)
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == sum(1 for _ in _readable(path)) > 0
    assert result.stderr.startswith(f"flowtap: {path}: truncated dump file")
    assert result.stderr.count("\n") == 1


def test_unreadable_inputs_fail_with_the_reason(runner, pcaps_dir, pcap):
    bad = str(pcaps_dir / "malformed" / "libpcap-pcap-invalid-version.pcap")
    result = run(runner, "ra", "-n", "-L", "-1", "-r", bad, pcap)
    assert result.exit_code == 1
    # the next input is still read
    assert len(result.stdout.splitlines()) == sum(1 for _ in meter_file(pcap))
    assert result.stderr.startswith(f"flowtap: {bad}: ")
    missing = run(runner, "ra", "-r", "/nonexistent/x.pcap")
    assert missing.exit_code == 1
    assert missing.stderr == "flowtap: /nonexistent/x.pcap: No such file or directory\n"


def test_a_foreign_sqlite_file_is_refused(runner, tmp_path):
    # Archives themselves: tests/test_query.py.
    import sqlite3
    db = tmp_path / "a.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    result = run(runner, "ra", "-r", str(db))
    assert result.exit_code == 1 and "not a flowtap archive" in result.stderr


def test_console_entry_point():
    out = subprocess.run([sys.executable, "-c", "from appliance.cli import main; main()", "ra",
                          "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("Usage: flowtap ra")
