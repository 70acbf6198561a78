"""Captures and record streams through pipes: ``zcat x.pcap.gz | flowtap ra -r -`` and named
pipes give what the file gives; a FIFO is opened once (it used to hang); what a pipe cannot
carry fails clearly."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

FLOWTAP = [sys.executable, "-m", "appliance.cli"]
CAPTURES = ["basic/tcpreplay-test.pcap", "large/nfstream-tor.pcapng", "linktypes/pcpp-sll.pcap",
            "large/pcpp-ip-frag.pcap", "linktypes/pcpp-nanosecs-bigendian.pcap"]
CSV = ["-n", "-u", "-c", ",", "-s", "stime", "ltime", "proto", "saddr", "sport", "daddr", "dport",
       "spkts", "dpkts", "sbytes", "dbytes", "sappbytes", "dappbytes", "state", "flgs"]


def flowtap(*args, stdin=None, input=None) -> subprocess.CompletedProcess:
    return subprocess.run([*FLOWTAP, *map(str, args)], stdin=stdin, input=input,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("name", CAPTURES)
def test_a_capture_on_stdin_gives_what_the_file_gives(pcaps_dir, name):
    path = pcaps_dir / name
    direct = flowtap("ra", "-r", path, *CSV)
    assert direct.returncode == 0 and direct.stdout.count(b"\n") >= 2     # the labels and records
    with open(path, "rb") as f:
        piped = flowtap("ra", "-r", "-", *CSV, stdin=f)         # stdin is the file: not a pipe
    assert piped.stdout == direct.stdout and piped.returncode == 0
    packed = gzip.compress(path.read_bytes())
    unzip = subprocess.Popen(["gzip", "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    feeder = threading.Thread(target=lambda: (unzip.stdin.write(packed), unzip.stdin.close()))
    feeder.start()
    piped = flowtap("ra", "-r", "-", *CSV, stdin=unzip.stdout)
    feeder.join()
    unzip.stdout.close()
    unzip.wait()
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == direct.stdout


def test_racluster_filters_and_c_printing_through_a_pipe(pcaps_dir):
    path = pcaps_dir / "large/pcpp-example.pcap"
    data = path.read_bytes()
    for args, flt in ((["ra", "-n"], ["-", "tcp"]), (["racluster", "-n", "-m", "saddr", "daddr"], []),
                      (["rasort", "-n", "-m", "bytes"], []), (["ra", "-q"], []), (["ra", "-M", "json"], [])):
        want = flowtap(*args, "-r", path, *flt)
        got = flowtap(*args, "-r", "-", *flt, input=data)
        assert got.returncode == want.returncode == 0, got.stderr
        assert got.stdout == want.stdout and got.stderr == want.stderr


def fifo_with(tmp_path: Path, data: bytes) -> Path:
    """A named pipe that a thread fills with ``data`` once a reader opens it."""
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(data)
    threading.Thread(target=write, daemon=True).start()
    return fifo


def test_a_named_pipe_is_read_once(pcaps_dir, tmp_path):
    path = pcaps_dir / "basic/tcpreplay-test.pcap"
    want = flowtap("ra", "-r", path, *CSV)

    got = flowtap("ra", "-r", fifo_with(tmp_path, path.read_bytes()), *CSV)

    assert got.returncode == 0 and got.stdout == want.stdout


def test_a_record_stream_through_a_named_pipe(pcaps_dir, tmp_path):
    path = pcaps_dir / "basic/tcpreplay-test.pcap"
    stream = flowtap("racluster", "-r", path, "-w", "-")
    want = flowtap("racluster", "-r", path, *CSV)

    got = flowtap("ra", "-r", fifo_with(tmp_path, stream.stdout), *CSV)

    assert got.returncode == 0 and got.stdout == want.stdout


def test_a_truncated_capture_on_stdin(pcaps_dir, tmp_path):
    """The records of what could be read, then the error, exit 1: as from the file."""
    data = (pcaps_dir / "large/pcpp-example.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) // 3])
    for args in (["-q"], CSV):
        want = flowtap("ra", *args, "-r", cut)
        got = flowtap("ra", *args, "-r", "-", input=cut.read_bytes())
        assert got.returncode == want.returncode == 1
        assert b"truncated dump file" in got.stderr
        assert got.stderr == want.stderr.replace(str(cut).encode(), b"-")
        assert got.stdout == want.stdout


@pytest.mark.parametrize("data, message", [
    (b"hello\n", b"neither a capture (pcap, pcapng) nor a flowtap record stream"),
    (b"SQLite format 3\x00" + bytes(100), b"an archive cannot be read from a pipe: name the file"),
    (b"", b"not a flowtap record stream"),
])
def test_what_a_pipe_cannot_carry(data, message):
    got = flowtap("ra", "-r", "-", input=data)
    assert got.returncode == 1 and got.stdout == b""
    assert got.stderr.startswith(b"flowtap: -: " + message) and got.stderr.count(b"\n") == 1


def test_record_from_stdin_archives_what_the_file_gives(pcaps_dir, tmp_path):
    path = pcaps_dir / "large/pcpp-example.pcap"
    assert flowtap("record", "-q", "-r", path, "-d", tmp_path / "file").returncode == 0
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    piped = flowtap("record", "-q", "-r", "-", "-d", tmp_path / "pipe", stdin=cat.stdout)
    cat.stdout.close()
    cat.wait()
    assert piped.returncode == 0, piped.stderr
    want = flowtap("ra", "-r", tmp_path / "file", *CSV)
    got = flowtap("ra", "-r", tmp_path / "pipe", *CSV)
    assert got.stdout == want.stdout and want.stdout.count(b"\n") > 100

    bad = flowtap("record", "-q", "-r", "-", "-d", tmp_path / "bad", input=b"hello\n" * 10)
    assert bad.returncode == 1
    assert bad.stderr.endswith(b"flowtap: -: not a capture (pcap or pcapng)\n")


def test_a_capture_on_stdin_without_a_descriptor(runner, pcaps_dir):
    """click's test runner gives stdin as an object with no descriptor: the relay copies it
    (there is nothing to splice), and the records are still the file's."""
    from appliance.cli import cli
    path = pcaps_dir / "basic/tcpreplay-test.pcap"
    want = runner.invoke(cli, ["ra", "-r", str(path), *CSV])
    got = runner.invoke(cli, ["ra", "-r", "-", *CSV], input=path.read_bytes())
    assert want.exit_code == 0 and want.stdout.count("\n") > 10
    assert got.exit_code == 0, got.stderr
    assert got.stdout == want.stdout
