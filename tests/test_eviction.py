"""Flow-table pressure: 1,000,000 distinct sessions through `flowtap ra -q` with the default table.

The table (262,144 flows) must evict instead of growing: peak RSS stays bounded and the stderr
summary counts evictions. A few long-lived sessions, active all along, are never the least recently
used, so they must come out whole: their records sum to what pcapgen sent and none ends by eviction.
"""

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import pcapgen as g

REPO = Path(__file__).resolve().parent.parent
SESSIONS = 1_000_000
SPAN_S = 10.0
RSS_LIMIT_KIB = 300 * 1024
RUN_TIMEOUT_S = 900
FIELDS = ["cause", "proto", "saddr", "sport", "daddr", "dport", "spkts", "dpkts", "sbytes", "dbytes",
          "sappbytes", "dappbytes"]
COUNTERS = ["spkts", "dpkts", "sbytes", "dbytes", "sappbytes", "dappbytes"]


def flowtap() -> str:
    """The flowtap console script: next to the running interpreter, in the project venv, or on PATH."""
    for candidate in (Path(sys.executable).with_name("flowtap"), REPO / ".venv" / "bin" / "flowtap"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("flowtap") or "flowtap"


def load_gen_capture():
    """bench/gen_capture.py as a module."""
    spec = importlib.util.spec_from_file_location("gen_capture", REPO / "bench" / "gen_capture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def long_lived() -> list[g.Session]:
    """Sessions with a packet at least every 0.25 s over the whole span (outside the generator's nets)."""
    rounds = int(SPAN_S / 0.25)
    return [
        g.tcp_session("10.250.0.1", "198.51.100.1", 50001, 443, [200] * rounds, [1000] * rounds,
                      close="fin", gap=0.002, think=0.24),
        g.udp_exchange("10.250.0.2", "198.51.100.2", 50002, 5353, [100] * rounds, [300] * rounds,
                       interval=0.25, vlan=42),
        g.tcp_session("2001:db8:250::1", "2001:db8:251::1", 50003, 80, [120] * rounds, [3000] * rounds,
                      close="rst", gap=0.002, think=0.23),
        g.udp_exchange("2001:db8:250::2", "2001:db8:251::2", 50004, 514, [120] * (2 * rounds), [],
                       interval=0.125),
    ]


def run_measured(argv: list[str]) -> tuple[int, int, str, str]:
    """Run argv to completion: (exit code, peak RSS KiB of the command itself, stdout, stderr).

    GNU time reports the command's own peak (ru_maxrss of os.wait4 would also count the pages of
    this test process at fork time, which grow with whatever else pytest has loaded).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, *argv],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=RUN_TIMEOUT_S)
        out.seek(0)
        err.seek(0)
        return proc.returncode, int(peak.read().split()[-1]), out.read().decode(), err.read().decode()


def summary(stderr: str) -> dict[str, int]:
    """packets/records/evicted from flowtap ra -q's one-line stderr summary."""
    found = {}
    for name in ("packets", "records", "evicted"):
        match = re.search(rf"\b{name}\b\W{{0,3}}(\d+)", stderr)
        if match:
            found[name] = int(match.group(1))
    return found


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """1,000,000 distinct two-packet sessions plus the long-lived ones: (path, sessions, packets)."""
    sessions = long_lived()
    extra = g.merge(*sessions)
    assert extra[-1].ts_us <= g.T0 * 1e6 + SPAN_S * 1e6 + 500_000
    path = tmp_path_factory.mktemp("eviction") / "distinct.pcap"
    stats = load_gen_capture().generate_distinct(str(path), SESSIONS, SPAN_S, extra)
    return path, sessions, stats["packets"]


@pytest.mark.slow
def test_memory_stays_bounded_and_evictions_are_counted(capture):
    path, _, packets = capture
    code, rss_kib, _, stderr = run_measured([flowtap(), "ra", "-q", "-r", str(path)])
    assert code == 0, stderr
    assert rss_kib < RSS_LIMIT_KIB, f"peak RSS {rss_kib / 1024:.0f} MiB"
    numbers = summary(stderr)
    assert numbers.get("evicted", 0) > 0, f"no eviction count in the summary: {stderr.strip()!r}"
    if "packets" in numbers:
        assert numbers["packets"] == packets
    if "records" in numbers:
        assert numbers["records"] >= SESSIONS + len(capture[1])


@pytest.mark.slow
def test_active_sessions_survive_whole(capture):
    path, sessions, _ = capture
    hosts = " or ".join(f"host {s.truth.saddr}" for s in sessions)
    code, _, stdout, stderr = run_measured([flowtap(), "ra", "-r", str(path), "-n", "-M", "json", "-s", *FIELDS,
                                            "-", hosts])
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    for s in sessions:
        t = s.truth
        mine = [r for r in records if int(r["sport"]) == t.sport
                and ipaddress.ip_address(r["saddr"]) == ipaddress.ip_address(t.saddr)]
        assert mine, f"no record for {t.saddr}:{t.sport}"
        assert not [r for r in mine if str(r["cause"]).lower().startswith("evict")], f"{t.saddr} was evicted"
        assert all(ipaddress.ip_address(r["daddr"]) == ipaddress.ip_address(t.daddr) for r in mine)
        assert {k: sum(int(r[k]) for r in mine) for k in COUNTERS} == t.counters(), t.saddr
