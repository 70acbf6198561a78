"""Benchmark: archives on disk and queries over them (DESIGN.md, Performance: "end to end" and
"query latency on an archive of 10 M records").

1. Recording: ``flowtap record -r bench/out/bench-2m.pcap`` against ``argus -r FILE -w x.arg``:
   records/s, and bytes per record on disk (archive size / records against .arg size / Argus
   records).
2. An archive set of 10 M records in 10 hourly files, built fast: the rows of the recorded
   archive copied by SQL five times per hour with shifted times and source addresses (the first
   octet of IPv4 clients; servers stay, so a server is busy in every hour), into files
   made from appliance.archive's schema (FLOW_COLUMNS, OPEN_INDEXES and CLOSE_INDEXES, archive_info summary and closing
   by archive.close_archive). Then ``flowtap ra -t RANGE -r DIR - host X`` (the flows_stime and
   address indexes) against the same command forced to a full scan (``NOT INDEXED``: the CLI with
   ``query.read_records`` patched to ``indexed=False``) and against no ``-t``; with the EXPLAIN QUERY
   PLAN of each.
3. racluster -m saddr daddr over 1 M records: ``flowtap racluster`` over the archive that
   ``flowtap record`` makes of ``bench/out/distinct-1000k.pcap`` (merged and printed in C, and the
   SQL GROUP BY and Python clusterer paths forced), against Argus's ``racluster`` over ``argus -r``
   of the same capture.

Results are printed and written into the ``query`` section of bench/RESULTS.md.

Example:
    .venv/bin/python bench/query_bench.py
    .venv/bin/python bench/query_bench.py --repeat 1 --keep
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]
import run as common                                     # noqa: E402  bench/run.py's helpers

from appliance import archive, filter as flt, query    # noqa: E402

OUT = BENCH / "out" / "query"
FLOWTAP = REPO / ".venv" / "bin" / "flowtap"
PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_PCAP, DISTINCT_PCAP = common.OUT / "bench-2m.pcap", common.OUT / "distinct-1000k.pcap"
HOURS, COPIES = 10, 5                                  # 10 files of 5 copies of the seed archive
T0 = 1_700_000_000 - 1_700_000_000 % 3600 + 86_400     # hour 0 of the 10 M set (a day later)
# The CLI with every archive read forced to a full scan, or with racluster in SQL declined.
FULL_SCAN = ("import functools, sys; from appliance import query, cli; "
             "query.read_records = functools.partial(query.read_records, indexed=False); "
             "sys.argv[0] = 'flowtap'; cli.main()")
PYTHON_CLUSTER = ("import sys; from appliance import query, cli; "
                  "query.cluster_archives = lambda *a, **k: None; sys.argv[0] = 'flowtap'; cli.main()")


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True, **kw)


def timed(label: str, argv: list[str], repeat: int) -> common.Case:
    """Measure one command (output to /dev/null) with bench/run.py's measure()."""
    case = common.Case(label, label, [[str(a) for a in argv]])
    common.measure(case, repeat)
    if case.error:
        raise RuntimeError(f"{label}: {case.error}")
    print(f"  {label}: {case.wall:.2f} s, {case.rss_kb / 1024:.0f} MiB", flush=True)
    return case


def archive_records(directory: Path) -> tuple[int, int]:
    """(records, bytes on disk) of the archives in a directory."""
    n = size = 0
    for path in archive.list_archives(directory):
        with archive.open_readonly(path) as conn:
            n += conn.execute("SELECT count(*) FROM flows").fetchone()[0]
        size += path.stat().st_size
    return n, size


def argus_records(arg: Path) -> int:
    """Flow records (not management records) in an Argus file."""
    done = sh(["ra", "-X", "-n", "-L", "-1", "-s", "seq", "-r", arg, "-", "not", "man"])
    return len(done.stdout.splitlines())


# --- 1. recording -------------------------------------------------------------------------------

def recording(capture: Path, name: str, repeat: int) -> dict:
    """flowtap record and argus on one capture: times, records, sizes."""
    print(f"recording {capture.name}", flush=True)
    data, arg = OUT / name, OUT / f"{name}.arg"
    cmd_f = [FLOWTAP, "record", "-q", "-r", capture, "-d", data]
    cmd_a = ["argus", "-r", capture, "-w", arg]
    best_f = best_a = None
    for _ in range(repeat):
        shutil.rmtree(data, ignore_errors=True)
        best_f = _best(best_f, cmd_f)
        arg.unlink(missing_ok=True)                    # argus -w appends
        best_a = _best(best_a, cmd_a)
    n_f, size_f = archive_records(data / "archive")
    n_a, size_a = argus_records(arg), arg.stat().st_size
    return {"flowtap": best_f, "argus": best_a, "n_f": n_f, "size_f": size_f, "n_a": n_a,
            "size_a": size_a, "cmd_f": cmd_f, "cmd_a": cmd_a, "dir": data / "archive", "arg": arg}


def _best(best: common.Case | None, argv: list) -> common.Case:
    case = timed(" ".join(common._show(str(a)) for a in argv), argv, 1)
    return case if best is None or case.wall < best.wall else best


# --- 2. a 10 M record archive set -------------------------------------------------------------

_SHIFT_V4 = ("CASE WHEN {c} GLOB '[0-9]*.*.*.*' THEN "
             "((CAST(substr({c}, 1, instr({c}, '.') - 1) AS INTEGER) + :k) % 224) "
             "|| substr({c}, instr({c}, '.')) ELSE {c} END")


def build_set(seed: Path, out: Path) -> Path:
    """Ten hourly archives of COPIES × the seed's rows each, times and IPv4 networks shifted."""
    [seed_file] = archive.list_archives(seed)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with archive.open_readonly(seed_file) as conn:
        first, last, n = conn.execute("SELECT min(stime), max(ltime), count(*) FROM flows").fetchone()
    step = 3600 / COPIES
    assert last - first < step, "the seed must fit into one copy's slot"
    select = []
    for name in archive.FLOW_NAMES:
        if name in ("stime", "ltime"):
            select.append(f"{name} + :dt")
        elif name == "seq":
            select.append("seq + :dseq")
        elif name == "saddr":                          # clients move, servers stay
            select.append(_SHIFT_V4.format(c=name))
        else:
            select.append(name)
    insert = (f"INSERT INTO flows ({', '.join(archive.FLOW_NAMES)}) "
              f"SELECT {', '.join(select)} FROM seed.flows ORDER BY rowid")
    for hour in range(HOURS):
        path = out / archive.archive_name(T0 + hour * 3600)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("ATTACH DATABASE ? AS seed", (f"file:{seed_file}?mode=ro&immutable=1",))
        conn.execute("BEGIN")
        conn.execute(f"CREATE TABLE flows ({', '.join(f'{n} {t}' for n, t in archive.FLOW_COLUMNS)})")
        conn.execute(f"CREATE TABLE sensor_status "
                     f"({', '.join(f'{n} {t}' for n, t in archive.STATUS_COLUMNS)})")
        conn.execute("CREATE TABLE archive_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for copy in range(COPIES):
            k = hour * COPIES + copy
            conn.execute(insert, {"dt": T0 + hour * 3600 + copy * step - first, "dseq": k * n,
                                  "k": k + 1})
        for name, target in archive.OPEN_INDEXES + archive.CLOSE_INDEXES:
            conn.execute(f"CREATE INDEX {name} ON {target}")
        archive._set_info(conn, schema_version=archive.SCHEMA_VERSION, sensor_id="bench",
                          interface="query_bench", config_digest="", opened_at=time.time(),
                          period_start=float(T0 + hour * 3600), period_seconds=3600, state="open",
                          flowtap_version="bench")
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE seed")
        conn.close()
        archive.close_archive(path)
        print(f"  built {path.name}", flush=True)
    return out


def busy_host(directory: Path, lo: float, hi: float) -> tuple[str, int]:
    """The server (destination address) with the most records starting in [lo, hi)."""
    best: dict[str, int] = {}
    for path in archive.list_archives(directory):
        with archive.open_readonly(path) as conn:
            for addr, n in conn.execute("SELECT daddr, count(*) FROM flows WHERE stime >= ? AND "
                                        "stime < ? GROUP BY daddr", (lo, hi)):
                best[addr] = best.get(addr, 0) + n
    addr = max(best, key=best.get)
    return addr, best[addr]


def set_max_dur(directory: Path, on: bool) -> None:
    """Add (or remove) ``max_dur`` in each file's archive_info: the longest record, which bounds
    how early a record overlapping a -t range can start (archive.py records it when it closes an
    archive; archives of older versions lack it)."""
    for path in archive.list_archives(directory):
        os.chmod(path, 0o644)
        with sqlite3.connect(path) as conn:
            if on:
                value = conn.execute("SELECT max(ltime - stime) FROM flows").fetchone()[0]
                archive._set_info(conn, max_dur=value)
            else:
                conn.execute("DELETE FROM archive_info WHERE key = 'max_dur'")
        os.chmod(path, 0o444)


def queries(directory: Path, repeat: int) -> dict:
    """ra -t RANGE - host X: indexed, forced full scan, and without -t."""
    set_max_dur(directory, True)
    lo = T0 + 5 * 3600 + 1800
    hi = lo + 600
    host, _ = busy_host(directory, lo, hi)
    rng = f"{lo}-{hi}"
    args = ["ra", "-n", "-u", "-c", ",", "-t", rng, "-r", directory, "-", "host", host]
    ast = flt.And(flt.parse_time_range(rng), flt.parse(f"host {host}"))
    middle = archive.list_archives(directory)[5]
    result = {"range": rng, "host": host, "files": len(archive.list_archives(directory)),
              "plan_indexed": query.explain(middle, ast),
              "plan_scan": query.explain(middle, ast, indexed=False),
              "plan_no_t": query.explain(middle, flt.parse(f"host {host}")),
              "matched": len(sh([FLOWTAP, *args]).stdout.splitlines()) - 1,
              "matched_no_t": len(sh([FLOWTAP, *args[:5], *args[7:]]).stdout.splitlines()) - 1}
    print(f"queries over {directory} (-t {rng} host {host})", flush=True)
    result["indexed"] = timed("flowtap ra -t RANGE - host X", [FLOWTAP, *args], repeat)
    result["scan"] = timed("same, NOT INDEXED", [PYTHON, "-c", FULL_SCAN, *args], repeat)
    result["no_t"] = timed("flowtap ra - host X (no -t)", [FLOWTAP, *args[:5], *args[7:]], repeat)
    result["no_t_scan"] = timed("same, NOT INDEXED", [PYTHON, "-c", FULL_SCAN, *args[:5], *args[7:]],
                                repeat)
    set_max_dur(directory, False)
    result["no_max_dur"] = timed("same, archive_info without max_dur", [FLOWTAP, *args], repeat)
    set_max_dur(directory, True)
    result["cmd"] = " ".join(["flowtap", *(common._show(str(a)) for a in args)])
    return result


# --- 3. racluster over 1 M records ---------------------------------------------------------------

def clustering(directory: Path, arg: Path, repeat: int) -> dict:
    """racluster -m saddr daddr: flowtap (C, SQL, Python) and Argus, output to /dev/null."""
    print("racluster -m saddr daddr over 1 M records", flush=True)
    args = ["racluster", "-m", "saddr", "daddr", "-n", "-r", directory]
    no_c = ["env", "FLOWTAP_NO_FASTPATH=1"]            # the clusterer in C declined
    c_out = sh([FLOWTAP, *args]).stdout
    sql_out = sh([*no_c, FLOWTAP, *args]).stdout
    py_out = sh([*no_c, PYTHON, "-c", PYTHON_CLUSTER, *args]).stdout
    argus_out = sh(["racluster", "-X", "-m", "saddr", "daddr", "-n", "-r", arg]).stdout
    return {"c": timed("flowtap racluster (C)", [FLOWTAP, *args], repeat),
            "sql": timed("flowtap racluster (SQL)", [*no_c, FLOWTAP, *args], repeat),
            "python": timed("flowtap racluster (Python)", [*no_c, PYTHON, "-c", PYTHON_CLUSTER, *args],
                            repeat),
            "argus": timed("argus racluster", ["racluster", "-X", "-m", "saddr", "daddr", "-n", "-r", arg],
                           repeat),
            "same": c_out == sql_out == py_out, "rows": len(c_out.splitlines()) - 1,
            "argus_rows": len(argus_out.splitlines()) - 1,
            "records": archive_records(directory)[0], "argus_records": argus_records(arg)}


# --- report ------------------------------------------------------------------------------------

def report(rec: dict, rec_d: dict, q: dict, cl: dict, n_set: int, size_set: int, repeat: int,
           build_s: float | None) -> list[str]:
    def rate(n: int, case: common.Case) -> str:
        return f"{n / case.wall:,.0f}"

    load = open("/proc/loadavg").read().split()[:3]
    rows = [
        "## Archives and queries", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
        f"revision: {common.revision()}",
        f"- machine: {common.machine()}; load average at the end {' '.join(load)} (other jobs "
        "were running: compare ratios)",
        f"- command: `.venv/bin/python bench/query_bench.py --repeat {repeat}"
        f"{' --keep' if build_s is None else ''}`; each case "
        f"{repeat}×, best wall time, output to /dev/null", "",
        "### Recording: records/s and bytes per record", "",
        "| capture | command | wall (s) | records | records/s | file bytes | bytes/record |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for r, cap in ((rec, BENCH_PCAP), (rec_d, DISTINCT_PCAP)):
        name = common._show(str(cap))
        rows += [f"| `{name}` | `{' '.join(common._show(str(a)) for a in r['cmd_f'])}` | "
                 f"{r['flowtap'].wall:.1f} | {r['n_f']:,} | {rate(r['n_f'], r['flowtap'])} | "
                 f"{r['size_f']:,} | {r['size_f'] / r['n_f']:.0f} |",
                 f"| `{name}` | `{' '.join(common._show(str(a)) for a in r['cmd_a'])}` | "
                 f"{r['argus'].wall:.1f} | {r['n_a']:,} | {rate(r['n_a'], r['argus'])} | "
                 f"{r['size_a']:,} | {r['size_a'] / r['n_a']:.0f} |"]
    rows += ["", f"- flowtap/argus records/s: {rec['n_f'] / rec['flowtap'].wall / (rec['n_a'] / rec['argus'].wall):.2f} "
             f"(bench-2m), {rec_d['n_f'] / rec_d['flowtap'].wall / (rec_d['n_a'] / rec_d['argus'].wall):.2f} "
             "(distinct-1000k); bytes/record flowtap/argus: "
             f"{(rec['size_f'] / rec['n_f']) / (rec['size_a'] / rec['n_a']):.2f} (bench-2m), "
             f"{(rec_d['size_f'] / rec_d['n_f']) / (rec_d['size_a'] / rec_d['n_a']):.2f} (distinct-1000k)",
             "- Argus records: `ra -X -n -r x.arg - not man` lines (argus with Debian's "
             "/etc/argus.conf: 5 s status interval); flowtap: rows of `flows` (60 s status interval). "
             "The archive holds 47 columns and 4 indexes (stime while it is open; saddr+stime, "
             "daddr+stime and dport+stime built when it closes, included in the wall time); rows "
             "are bound in C (native/store.c). A .arg record holds Argus's default DSRs.", "",
             "### ra -t over 10 M records", "",
             f"- set: {q['files']} hourly archives, {n_set:,} records, {size_set / 1e9:.2f} GB, "
             + ("reused from an earlier run (`--keep`), " if build_s is None else f"built in {build_s:.0f} s ")
             + f"by SQL from the bench-2m archive ({COPIES} copies per hour, "
             "times shifted, the first octet of IPv4 source addresses shifted per copy)",
             f"- query: `{q['cmd']}` ({q['matched']:,} records match; without -t "
             f"{q['matched_no_t']:,})", "",
             "| case | wall (s) | vs indexed |", "|---|---:|---:|",
             f"| -t RANGE - host X (indexes; `max_dur` from archive_info bounds how early a "
             f"record in the range can start) | {q['indexed'].wall:.2f} | 1.00 |",
             f"| the same on archives without `max_dur` in archive_info (older versions: the "
             f"first file's longest record is looked up) | "
             f"{q['no_max_dur'].wall:.2f} | {q['no_max_dur'].wall / q['indexed'].wall:.2f} |",
             f"| the same, NOT INDEXED (full scan of every file in the range) | {q['scan'].wall:.2f} | "
             f"{q['scan'].wall / q['indexed'].wall:.1f} |",
             f"| - host X, no -t (address indexes, all {q['files']} files) | {q['no_t'].wall:.2f} | "
             f"{q['no_t'].wall / q['indexed'].wall:.1f} |",
             f"| - host X, no -t, NOT INDEXED (full scan of all {n_set:,} records) | "
             f"{q['no_t_scan'].wall:.2f} | {q['no_t_scan'].wall / q['indexed'].wall:.1f} |", "",
             "EXPLAIN QUERY PLAN (one file in the range):", "",
             f"- indexed: `{' / '.join(q['plan_indexed'])}`",
             f"- NOT INDEXED: `{' / '.join(q['plan_scan'])}`",
             f"- no -t: `{' / '.join(q['plan_no_t'])}`", "",
             "### racluster -m saddr daddr over 1 M records", "",
             f"- input: the archive of `{common._show(str(DISTINCT_PCAP))}` ({cl['records']:,} records) "
             f"and Argus's .arg of the same capture ({cl['argus_records']:,} records); "
             f"{cl['rows']:,} clusters (Argus {cl['argus_rows']:,}); C, SQL and Python output "
             f"{'identical' if cl['same'] else 'DIFFERENT'}", "",
             "| case | command | wall (s) | records/s | peak RSS (MiB) |", "|---|---|---:|---:|---:|"]
    for key, label, cmd in (("c", "flowtap, merged and printed in C (native/cluster.c)",
                             "flowtap racluster -m saddr daddr -n -r DIR"),
                            ("sql", "flowtap, GROUP BY in SQL (C declined)", "same, FLOWTAP_NO_FASTPATH=1"),
                            ("python", "flowtap, Python clusterer (C and SQL declined)",
                             "same, and query.cluster_archives declined"),
                            ("argus", "Argus racluster", "racluster -X -m saddr daddr -n -r x.arg")):
        c = cl[key]
        n = cl["argus_records"] if key == "argus" else cl["records"]
        rows.append(f"| {label} | `{cmd}` | {c.wall:.2f} | {rate(n, c)} | {c.rss_kb / 1024:.0f} |")
    rows += ["", f"- flowtap (C)/Argus wall: {cl['c'].wall / cl['argus'].wall:.2f}; "
             f"C/SQL: {cl['c'].wall / cl['sql'].wall:.2f}; SQL/Python: {cl['sql'].wall / cl['python'].wall:.2f}"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="reuse a 10 M set already built")
    args = parser.parse_args(argv)
    common.ensure_capture(BENCH_PCAP, ["--packets", str(common.PACKETS), "--sessions",
                                       str(common.SESSIONS)])
    common.ensure_capture(DISTINCT_PCAP, ["--distinct-sessions", str(common.DISTINCT)])
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TZ", "UTC")
    rec = recording(BENCH_PCAP, "bench-2m", args.repeat)
    rec_d = recording(DISTINCT_PCAP, "distinct-1000k", 1)
    big = OUT / "set-10m"
    build_s = None                  # None: reused (--keep)
    if not (args.keep and archive.list_archives(big)):
        print("building the 10 M record set", flush=True)
        t = time.perf_counter()
        build_set(rec["dir"], big)
        build_s = time.perf_counter() - t
    n_set, size_set = archive_records(big)
    q = queries(big, args.repeat)
    cl = clustering(rec_d["dir"], rec_d["arg"], args.repeat)
    body = report(rec, rec_d, q, cl, n_set, size_set, args.repeat, build_s)
    print("\n".join(body))
    common.write_results("query", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
