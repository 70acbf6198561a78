"""Benchmark: metering a capture file, flowtap against Argus and the bare libpcap floor (DESIGN.md, Performance).

All cases run in one run on the same generated capture (generated first if missing), each
``--repeat`` times; the table keeps the best wall time and the highest peak RSS, measured per child
with GNU time (for a pipeline, the RSS of the process named in the table). Results are printed and
written into bench/RESULTS.md (only the section of the mode that ran is replaced).

Cases:
  (a) floor     bench/out/pcap_floor FILE (pcap_open_offline + pcap_next_ex, built here with cc -O2)
  (b) argus     argus -r FILE -w - | ra -r - -n -u -c , -s <14 columns>      RSS: argus
  (c) meter     .venv/bin/flowtap ra -q -r FILE
  (d) csv       .venv/bin/flowtap ra -r FILE -n -u -c , -s <14 columns>    (records to /dev/null)
``--eviction`` instead runs ``flowtap ra -q`` (default table, 262,144 flows) on 1,000,000 distinct
sessions and reports peak RSS and the eviction count from its stderr summary.

Example:
    .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --eviction
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
COLUMNS = ["stime", "ltime", "proto", "saddr", "sport", "daddr", "dport", "spkts", "dpkts", "sbytes", "dbytes",
           "sappbytes", "dappbytes", "state"]
PACKETS, SESSIONS, DISTINCT = 2_000_000, 200_000, 1_000_000
TIME = "/usr/bin/time"                # GNU time (Debian package `time`): peak RSS of the measured stage


@dataclasses.dataclass
class Case:
    """One benchmarked command line (a pipeline of argv lists); ``rss_of`` names the measured stage."""

    key: str
    label: str
    pipeline: list[list[str]]
    rss_of: int = 0
    missing: str = ""                 # why it cannot run, if it cannot
    wall: float | None = None
    rss_kb: int = 0
    error: str = ""
    stderr: str = ""

    @property
    def command(self) -> str:
        """The pipeline as a shell would show it, with repository paths relative."""
        return " | ".join(" ".join(_show(a) for a in argv) for argv in self.pipeline)


def _show(arg: str) -> str:
    """One argument for display, a path inside the repository made relative."""
    return os.path.relpath(arg, REPO) if arg.startswith(str(REPO) + os.sep) else arg


def run_once(pipeline: list[list[str]], rss_of: int) -> tuple[float, int, list[int], str]:
    """Run a pipeline once, its output to /dev/null: (wall s, peak RSS KiB of stage rss_of, exit codes, stderr).

    The measured stage runs under /usr/bin/time: os.wait4's ru_maxrss for a child that Python spawned
    also counts the Python parent's pages present before exec (vfork), about 16 MiB here, which would
    hide the floor's real footprint.
    """
    procs = []
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss_file:
        began = time.perf_counter()
        stdin = subprocess.DEVNULL
        for i, argv in enumerate(pipeline):
            last = i == len(pipeline) - 1
            if i == rss_of:
                argv = [TIME, "-f", "%M", "-o", rss_file.name, *argv]
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                                    stderr=err)
            if procs:
                procs[-1].stdout.close()          # the next stage owns the pipe now
            procs.append(proc)
            stdin = proc.stdout
        codes = [proc.wait() for proc in procs]
        wall = time.perf_counter() - began
        err.seek(0)
        lines = rss_file.read().split()
        return wall, int(lines[-1]) if lines else 0, codes, err.read().decode(errors="replace")


def measure(case: Case, repeat: int) -> None:
    """Run a case repeat times; keep the best wall time and the highest peak RSS."""
    if case.missing:
        return
    for _ in range(repeat):
        wall, rss, codes, stderr = run_once(case.pipeline, case.rss_of)
        if any(codes):
            last = (stderr.strip().splitlines() or ["no stderr"])[-1]
            case.error = f"exit status {codes}: {last[-200:]}"
            return
        case.wall = wall if case.wall is None else min(case.wall, wall)
        case.rss_kb = max(case.rss_kb, rss)
        case.stderr = stderr


def ensure_capture(path: Path, args: list[str]) -> None:
    """Generate a capture with gen_capture.py unless it exists."""
    if path.exists():
        return
    OUT.mkdir(exist_ok=True)
    print(f"generating {path.relative_to(REPO)} ...", flush=True)
    subprocess.run([sys.executable, str(BENCH / "gen_capture.py"), *args, "-o", str(path)], check=True)


def build_floor() -> Path:
    """Compile pcap_floor.c into bench/out unless the binary is newer than the source."""
    source, binary = BENCH / "pcap_floor.c", OUT / "pcap_floor"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        OUT.mkdir(exist_ok=True)
        subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source), "-lpcap"],
                       check=True)
    return binary


def count_packets(floor: Path, capture: Path) -> int:
    """Packets in a capture, as the floor reads them."""
    out = subprocess.run([str(floor), str(capture)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[1])


def flowtap_missing(flowtap: Path) -> str:
    """Why the flowtap CLI cannot run, or ''."""
    if not os.access(flowtap, os.X_OK):
        return f"{os.path.relpath(flowtap, REPO)} not found (run `make build`)"
    probe = subprocess.run([str(flowtap), "ra", "--help"], capture_output=True, text=True)
    last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return "" if probe.returncode == 0 else f"`flowtap ra --help` failed: {last}"


def summary_numbers(text: str) -> dict[str, int]:
    """Numbers from flowtap's one-line stderr summary (``packets N records N evicted N``, any separator)."""
    found = {}
    for name in ("packets", "records", "evicted"):
        match = re.search(rf"\b{name}\b\W{{0,3}}(\d+)", text)
        if match:
            found[name] = int(match.group(1))
    return found


def machine() -> str:
    """CPU model, core count, kernel, and the versions of the tools compared."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("argus-server", "argus-client", "libpcap0.8"):
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
        versions.append(f"{package} {done.stdout or '?'}")
    return f"{model}, nproc {os.cpu_count()}, Linux {platform.release()}, Python {platform.python_version()}; " + \
        ", ".join(versions)


def revision() -> str:
    """The git commit benchmarked, marked dirty if the tree has changes."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    commit = head.stdout.strip() or "no commit"
    return commit + (" + uncommitted changes" if dirty.stdout.strip() else "")


def pps(packets: int, case: Case) -> float | None:
    """Packets per second of a measured case."""
    return packets / case.wall if case.wall else None


def fmt(value: float | None, spec: str) -> str:
    """A number for the table, or a dash."""
    return "–" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    """a/b for the table, or a dash."""
    return f"{a / b:.2f}" if a and b else "–"


def table(cases: list[Case], packets: int) -> list[str]:
    """Markdown rows: case, command, best wall, packets/s, peak RSS."""
    rows = ["| case | command | best wall (s) | packets/s | peak RSS (MiB) |", "|---|---|---:|---:|---:|"]
    for c in cases:
        command = c.command.replace("|", "\\|")          # a pipe inside a table cell must be escaped
        if c.wall is None:
            note = c.missing or c.error or "not run"
            rows.append(f"| {c.label} | `{command}` | not run: {note} | | |")
        else:
            rows.append(f"| {c.label} | `{command}` | {c.wall:.3f} | {fmt(pps(packets, c), ',.0f')} | "
                        f"{c.rss_kb / 1024:.1f} |")
    return rows


def write_results(section: str, body: list[str]) -> None:
    """Replace (or append) one marked section of bench/RESULTS.md."""
    begin, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    block = "\n".join([begin, *body, end])
    text = RESULTS.read_text() if RESULTS.exists() else (
        "# Benchmark results\n\nWritten by `bench/run.py` (see DESIGN.md, Performance). Figures are ratios "
        "measured in one run on one machine; compare ratios, not absolute rates, across machines.\n")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def header(title: str, capture: Path, packets: int, generator: str, repeat: int, command: str) -> list[str]:
    """The lines that say when, where, on what and how a section was measured."""
    size = capture.stat().st_size / 1e6
    return [f"## {title}", "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; revision: {revision()}",
            f"- machine: {machine()}",
            f"- capture: `{capture.relative_to(REPO)}`, {packets:,} packets, {size:,.0f} MB, from "
            f"`{generator}`",
            f"- command: `{command}`; each case {repeat}×: best wall time, highest peak RSS (GNU time %M)", ""]


def meter(args: argparse.Namespace) -> int:
    """Cases (a)-(d) on the benchmark capture."""
    capture = Path(args.capture or OUT / "bench-2m.pcap").resolve()
    gen_args = ["--packets", str(args.packets), "--sessions", str(args.sessions)]
    ensure_capture(capture, gen_args)
    floor = build_floor()
    packets = count_packets(floor, capture)
    flowtap = Path(args.flowtap).resolve()
    missing = flowtap_missing(flowtap)
    f, ft = str(capture), str(flowtap)
    cases = [
        Case("a", "(a) libpcap floor", [[str(floor), f]]),
        Case("b", "(b) argus \\| ra", [["argus", "-r", f, "-w", "-"],
                                       ["ra", "-r", "-", "-n", "-u", "-c", ",", "-s", *COLUMNS]]),
        Case("c", "(c) flowtap ra -q", [[ft, "ra", "-q", "-r", f]], missing=missing),
        Case("d", "(d) flowtap ra CSV", [[ft, "ra", "-r", f, "-n", "-u", "-c", ",", "-s", *COLUMNS]],
             missing=missing),
    ]
    run_once(cases[0].pipeline, 0)                          # warm the page cache
    for case in cases:
        print(f"{case.label}: {case.command}", flush=True)
        measure(case, args.repeat)
    a, b, c, d = cases
    ratios = [
        "| ratio | value |", "|---|---:|",
        f"| (c)/(a) packets/s, flowtap metering vs the floor | {ratio(pps(packets, c), pps(packets, a))} |",
        f"| (d)/(b) packets/s, flowtap CSV vs argus \\| ra | {ratio(pps(packets, d), pps(packets, b))} |",
        f"| (c)/(b) packets/s, flowtap metering vs argus \\| ra | {ratio(pps(packets, c), pps(packets, b))} |",
        f"| RSS (c) flowtap -q / argus | {ratio(c.rss_kb, b.rss_kb)} |",
        f"| RSS (d) flowtap CSV / argus | {ratio(d.rss_kb, b.rss_kb)} |",
    ]
    generator = "python bench/gen_capture.py " + " ".join(gen_args)
    repeat = f" --repeat {args.repeat}" if args.repeat != 3 else ""
    body = header("Metering a capture file", capture, packets, generator, args.repeat,
                  f".venv/bin/python bench/run.py{repeat}") + table(cases, packets) + [""] + ratios
    if c.stderr.strip():
        body += ["", f"flowtap ra -q summary: `{c.stderr.strip().splitlines()[-1]}`"]
    print("\n".join(body))
    if not args.no_results:
        write_results("meter", body)
    return 1 if any(x.error for x in cases) else 0


def eviction(args: argparse.Namespace) -> int:
    """flowtap ra -q (default table) on 1,000,000 distinct sessions: peak RSS and evictions."""
    capture = Path(args.capture or OUT / f"distinct-{args.distinct // 1000}k.pcap").resolve()
    gen_args = ["--distinct-sessions", str(args.distinct)]
    ensure_capture(capture, gen_args)
    floor = build_floor()
    packets = count_packets(floor, capture)
    flowtap = Path(args.flowtap).resolve()
    f = str(capture)
    cases = [
        Case("c", "flowtap ra -q", [[str(flowtap), "ra", "-q", "-r", f]], missing=flowtap_missing(flowtap)),
        Case("b", "argus (reference)", [["argus", "-r", f, "-w", "-"], ["ra", "-r", "-", "-q"]]),
    ]
    for case in cases:
        print(f"{case.label}: {case.command}", flush=True)
        measure(case, args.repeat)
    flowtap_case = cases[0]
    numbers = summary_numbers(flowtap_case.stderr)
    generator = "python bench/gen_capture.py " + " ".join(gen_args)
    body = header(f"Flow-table pressure: {args.distinct:,} distinct sessions", capture, packets, generator,
                  args.repeat, ".venv/bin/python bench/run.py --eviction") + table(cases, packets) + [""]
    if flowtap_case.wall is not None:
        summary = flowtap_case.stderr.strip().splitlines()[-1] if flowtap_case.stderr.strip() else "(none)"
        body += [f"- flowtap summary (stderr): `{summary}`",
                 f"- evicted: {numbers.get('evicted', 'not reported')}; table capacity 262,144 (default)",
                 f"- RSS flowtap / argus: {ratio(flowtap_case.rss_kb, cases[1].rss_kb)}"]
    print("\n".join(body))
    if not args.no_results:
        write_results("eviction", body)
    if flowtap_case.wall is not None and "evicted" not in numbers:
        print("bench: no eviction count in flowtap's stderr summary", file=sys.stderr)
        return 1
    return 1 if any(x.error for x in cases) else 0


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Example: "
                                     ".venv/bin/python bench/run.py   (or: make bench)")
    parser.add_argument("--eviction", action="store_true", help="the distinct-sessions memory/eviction run")
    parser.add_argument("--capture", help="use this capture instead of the generated one")
    parser.add_argument("--packets", type=int, default=PACKETS)
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--distinct", type=int, default=DISTINCT, help="sessions in the --eviction capture")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flowtap", default=str(REPO / ".venv" / "bin" / "flowtap"))
    parser.add_argument("--no-results", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    for tool in ("argus", "ra", "cc", TIME):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (apt-get install argus-server argus-client gcc libpcap-dev time)",
                  file=sys.stderr)
            return 2
    return eviction(args) if args.eviction else meter(args)


if __name__ == "__main__":
    sys.exit(main())
