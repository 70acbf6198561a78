"""Benchmark: IDS alerts against archives of 10 M sessions (issue 14, Done when 3).

1. The 10 M record set of ``query_bench`` (10 hourly archives; built here if missing, shared with
   it under bench/out/query/set-10m).
2. 1 M Suricata EVE alert lines written from it: 90 % on sessions of the set (their 5-tuple,
   a time inside the session, the Community ID), 10 % on endpoints no session has. Times are
   spread over the 10 hours.
3. ``flowtap alerts import -d SET eve.json`` (alerts/s, the summary's linked count), then
   ``flowtap alerts -r SET -t HOUR -M json`` over one hour (each alert with its linked sessions),
   and ``flowtap ra -r SET -n --around ID`` for an alert on the busiest server.

Results are printed and written into the ``alerts`` section of bench/RESULTS.md.

Example:
    .venv/bin/python bench/alerts_bench.py --keep
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]
import query_bench as qb                                 # noqa: E402
import run as common                                     # noqa: E402

from appliance import alert_formats, alerts, archive     # noqa: E402

N_ALERTS = 1_000_000
UNLINKED = 0.10
EVE = qb.OUT / "alerts-1m.eve.json"


def seed_archive() -> Path:
    """bench-2m recorded by flowtap (query_bench's seed), recorded here if missing."""
    common.ensure_capture(qb.BENCH_PCAP, ["--packets", str(common.PACKETS), "--sessions",
                                          str(common.SESSIONS)])
    data = qb.OUT / "bench-2m"
    if not archive.list_archives(data / "archive"):
        subprocess.run([qb.FLOWTAP, "record", "-q", "-r", qb.BENCH_PCAP, "-d", data], check=True)
    return data / "archive"


def eve_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f+0000")


def write_alerts(directory: Path, out: Path, n: int) -> None:
    """n EVE alert lines: sessions of the set sampled evenly, and some on no session."""
    rng = random.Random(14)
    files = archive.list_archives(directory)
    with out.open("w") as f:
        for i_file, path in enumerate(files):
            per_file = (n * (i_file + 1)) // len(files) - (n * i_file) // len(files)
            with archive.open_readonly(path) as conn:
                total = conn.execute("SELECT max(rowid) FROM flows").fetchone()[0]
                step = max(1, total // per_file)
                rows = conn.execute("SELECT stime, ltime, proto, saddr, sport, daddr, dport, "
                                    "community_id FROM flows WHERE rowid % ? = 0 AND proto IN (6, 17) "
                                    "LIMIT ?", (step, per_file)).fetchall()
                if len(rows) < per_file:          # every TCP/UDP record of a sparse file, again
                    rows = (rows * (per_file // max(1, len(rows)) + 1))[:per_file]
            for i, (stime, ltime, proto, sa, sp, da, dp, cid) in enumerate(rows):
                t = stime + (ltime - stime) * rng.random()
                if rng.random() < UNLINKED:
                    sa, cid = f"192.0.2.{rng.randrange(1, 255)}", None
                sid = 2_000_000 + rng.randrange(500)
                line = {"timestamp": eve_time(t), "flow_id": rng.getrandbits(50), "event_type": "alert",
                        "src_ip": sa, "src_port": sp, "dest_ip": da, "dest_port": dp,
                        "proto": "TCP" if proto == 6 else "UDP", "community_id": cid,
                        "alert": {"action": "allowed", "gid": 1, "signature_id": sid, "rev": 1,
                                  "signature": f"BENCH rule {sid}", "category": "Misc activity",
                                  "severity": 1 + sid % 3}}
                if cid is None:
                    del line["community_id"]
                f.write(json.dumps(line, separators=(",", ":")) + "\n")


def clear_alerts(directory: Path) -> None:
    for p in alerts.alert_files(directory):
        p.unlink()
        Path(f"{p}-journal").unlink(missing_ok=True)


def run(argv: list, stdout=subprocess.DEVNULL) -> tuple[float, str, str]:
    t = time.perf_counter()
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE if stdout is None else stdout,
                       stderr=subprocess.PIPE, text=True, check=True)
    return time.perf_counter() - t, p.stdout or "", p.stderr


def children_cpu() -> float:
    """CPU seconds (user + system) of the commands run so far: a figure the other work on the
    machine changes less than the wall time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="reuse the 10 M set and alert file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TZ", "UTC")
    big = qb.OUT / "set-10m"
    if not (args.keep and archive.list_archives(big)):
        print("building the 10 M record set", flush=True)
        qb.build_set(seed_archive(), big)
    n_set, _ = qb.archive_records(big)
    for p in archive.list_archives(big):                 # closed archives are read-only files;
        os.chmod(p.parent, 0o755)                        # alerts go beside them, as on the box
    if not (args.keep and EVE.exists()):
        print(f"writing {N_ALERTS:,} alerts", flush=True)
        write_alerts(big, EVE, N_ALERTS)
    n_lines = sum(1 for _ in EVE.open())
    clear_alerts(big)
    imp_cmd = [qb.FLOWTAP, "alerts", "import", "-d", big, EVE]
    cpu0, load = children_cpu(), os.getloadavg()[0]
    imp_s, summary, _ = run(imp_cmd, stdout=None)
    imp_cpu, load = children_cpu() - cpu0, max(load, os.getloadavg()[0])
    hour = qb.T0 + 3 * 3600
    rng = f"{hour}-{hour + 3600}"
    list_cmd = [qb.FLOWTAP, "alerts", "-r", big, "-t", rng, "-M", "json"]
    t = time.perf_counter()
    with subprocess.Popen([str(a) for a in list_cmd], stdout=subprocess.PIPE, text=True) as p:
        listed = linked_listed = 0
        for line in p.stdout:
            listed += 1
            linked_listed += bool(json.loads(line)["sessions"])
    list_s = time.perf_counter() - t
    host, _ = qb.busy_host(big, hour, hour + 3600)
    busy = next(alerts.iter_alerts(big, None, hour + 1800, hour + 3600,
                                   None)) if host is None else next(
        a for a in alerts.iter_alerts(big, None, hour + 1800, hour + 3600) if host in (a["saddr"], a["daddr"]))
    around_cmd = [qb.FLOWTAP, "ra", "-r", big, "-n", "--around", busy["id"]]
    best_around, around_out = None, ""
    for _ in range(3):
        s, around_out, _ = run(around_cmd, stdout=None)
        best_around = s if best_around is None else min(best_around, s)
    n_around = max(0, len(around_out.splitlines()) - 1)
    clear_alerts(big)
    body = [
        "## IDS alerts", "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; revision: "
        f"{common.revision()}. Machine: {common.machine()}. Set: {n_set:,} session records in 10 hourly archives "
        f"(`bench/query_bench.py`'s set-10m); {n_lines:,} Suricata EVE alert lines, {UNLINKED:.0%} on "
        "endpoints no session has. EVE lines read in "
        f"{'C (appliance._alertparse)' if alert_formats._alertparse else 'Python (appliance._alertparse not built)'}. "
        "Command: `.venv/bin/python bench/alerts_bench.py --keep`.",
        "",
        "| case | command | result |",
        "|---|---|---|",
        f"| import | `flowtap alerts import -d set-10m alerts-1m.eve.json` | {imp_s:.1f} s, "
        f"**{n_lines / imp_s:,.0f} alerts/s** (goal ≥ 50,000); CPU {imp_cpu:.1f} s on 2 threads, "
        f"load average up to {load:.1f} on {os.cpu_count()} cores; `{summary.strip()}` |",
        f"| list one hour, linked | `flowtap alerts -r set-10m -t {rng} -M json` | {list_s:.1f} s for "
        f"{listed:,} alerts, {linked_listed:,} with sessions |",
        f"| around a busy host | `flowtap ra -r set-10m -n --around ID` (server {busy['daddr']}, "
        f"±900 s; best of 3) | **{best_around:.2f} s** (goal < 1 s), {n_around:,} sessions |",
    ]
    print("\n".join(body))
    common.write_results("alerts", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
