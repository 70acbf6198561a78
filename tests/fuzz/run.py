"""Run every fuzz harness for a fixed time and print how many executions each did.

Harnesses: ``filter`` (tests/fuzz/fuzz_filter.py, atheris), ``config`` (tests/fuzz/fuzz_config.py,
atheris) and ``native`` (the libFuzzer target tests/native/fuzz_meter.c, through
``make -C tests/native fuzz FUZZ_SECONDS=N``). Corpora persist in tests/fuzz/out/ (and
tests/native/out/fuzz_corpus), so each run continues where the last stopped; a crash leaves its
input there (``*-crash-*``, ``crash-*``) and makes the exit status 1.

Example::

    python tests/fuzz/run.py --seconds 60                 # one minute each
    python tests/fuzz/run.py --seconds 600 --only native --only filter
    python tests/fuzz/run.py --seconds 20 --strict         # known bugs count as crashes too
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "out"
HARNESSES = ("filter", "config", "native")

sys.path.insert(0, str(HERE))


def _dict_entry(word: str) -> str:
    body = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "".join(f"\\x{b:02x}" for b in c.encode())
                   for c in word)
    return f'"{body}"'


def prepare(name: str) -> tuple[Path, Path, Path]:
    """(corpus dir, seed dir, dictionary file) of a Python harness, written afresh."""
    import common
    corpus, seeds, dict_path = OUT / f"corpus-{name}", OUT / f"seeds-{name}", OUT / f"{name}.dict"
    corpus.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(seeds, ignore_errors=True)
    seeds.mkdir(parents=True)
    if name == "filter":
        words = common.FILTER_WORDS
        inputs = [common.encode_filter(t) for t in common.SEED_FILTERS]
    else:
        words = common.TOML_WORDS
        inputs = [b"\x00" + t.encode() for t in common.SEED_CONFIGS]
    for i, data in enumerate(inputs):
        (seeds / f"seed{i:03d}").write_bytes(data)
    dict_path.write_text("".join(_dict_entry(w) + "\n" for w in words))
    return corpus, seeds, dict_path


def run_one(name: str, seconds: int, strict: bool) -> dict:
    """Run one harness; returns its name, executions, seconds, crashed flag and log path."""
    OUT.mkdir(parents=True, exist_ok=True)
    log_path = OUT / f"{name}.log"
    env = dict(os.environ, FLOWTAP_FUZZ_STRICT="1" if strict else "0")
    if name == "native":
        argv = ["make", "-s", "-C", str(REPO / "tests" / "native"), "fuzz", f"FUZZ_SECONDS={seconds}"]
    else:
        corpus, seeds, dict_path = prepare(name)
        argv = [sys.executable, str(HERE / f"fuzz_{name}.py"), f"-max_total_time={seconds}",
                "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048", "-max_len=4096",
                f"-dict={dict_path}", f"-artifact_prefix={OUT}/{name}-", str(corpus), str(seeds)]
    started = time.monotonic()
    with open(log_path, "w") as log:
        rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    return parse_log(name, rc, time.monotonic() - started)


def parse_log(name: str, rc: int = 0, elapsed: float = 0.0) -> dict:
    """Executions, fuzzing seconds and crash flag from a harness's log in tests/fuzz/out/."""
    log_path = OUT / f"{name}.log"
    text = log_path.read_text(errors="replace")
    done = re.search(r"Done (\d+) runs in (\d+) second", text)
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", text) or done
    execs = int(m.group(1)) if m else 0
    seconds = float(done.group(2)) if done else elapsed
    crashed = rc != 0 or "ERROR: libFuzzer" in text or "Test unit written" in text or not done
    return {"name": name, "executions": execs, "seconds": seconds or elapsed, "crashed": crashed,
            "rc": rc, "log": log_path}


RESULTS = REPO / "bench" / "RESULTS.md"
MARK_BEGIN, MARK_END = "<!-- bench:fuzzing -->", "<!-- /bench:fuzzing -->"


def write_results(results: list[dict], command: str, jobs: int = 1) -> None:
    """Replace the Fuzzing section of bench/RESULTS.md (between its markers) with these figures."""
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    total = sum(r["executions"] for r in results)
    lines = [
        "## Fuzzing", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; revision: {rev} (+ uncommitted changes)",
        f"- command: `{command}`; harnesses {'side by side' if jobs > 1 else 'one after another'}, "
        "corpora kept in tests/fuzz/out/ and "
        "tests/native/out/fuzz_corpus",
        "- filter, config: atheris (libFuzzer inside CPython) over tests/fuzz/fuzz_filter.py and "
        "fuzz_config.py; native: libFuzzer + ASan/UBSan over tests/native/fuzz_meter.c", "",
        "| harness | executions | seconds | exec/s | result |", "|---|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['executions']:,} | {r['seconds']:.0f} | "
                     f"{r['executions'] / max(r['seconds'], 1e-9):,.0f} | {'CRASH' if r['crashed'] else 'clean'} |")
    lines.append(f"| total | {total:,} | | | |")
    block = MARK_BEGIN + "\n" + "\n".join(lines) + "\n" + EXTRA_NOTES + MARK_END
    text = RESULTS.read_text()
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


EXTRA_NOTES = """
Bugs the harnesses found (inputs that raise something other than FilterError/ConfigError). They are
listed in `tests/fuzz/common.py` (`KNOWN`), which lets long runs go past them (`--strict` does not),
and reproduced by the `xfail(strict=True)` tests in `tests/test_fuzz_props.py`:

| id | input | what happens |
|---|---|---|
| F1 | `flowtap ra -r ARCHIVE - pkts gt 99999999999999999999` | OverflowError from sqlite3 (the int is bound as a parameter) |
| F2 | `flowtap ra -r ARCHIVE - srcid $'\\xff'` (non-UTF-8 argv becomes a lone surrogate) | UnicodeEncodeError from sqlite3 |
| F3 | `host 10.0.0.0 or host 10.0.0.1 or ...` with 100 hosts | SQL form: "parser stack overflow" (one nesting level per operator); 300 hosts: SyntaxError "too many nested parentheses" in compile_predicate |
| F4 | 1,000 nested parentheses (or `not`s) | RecursionError from parse |
| F5 | `port h\\x00ttp` (a NUL, e.g. from the web search form) | ValueError "embedded null character" from socket.getservbyname; a surrogate: UnicodeEncodeError |
| C1 | a config file with a byte that is not UTF-8 | UnicodeDecodeError from config.load (`flowtap record -c FILE` prints a traceback) |
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seconds", type=int, default=60, help="time per harness (default 60)")
    ap.add_argument("--only", action="append", choices=HARNESSES, help="run only these (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="harnesses run at once (default 1)")
    ap.add_argument("--results", action="store_true",
                    help="write the figures into the Fuzzing section of bench/RESULTS.md")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: read the last logs in tests/fuzz/out/ (with --results: write them)")
    ap.add_argument("--strict", action="store_true",
                    help="also fail on the known, reported bugs (tests/fuzz/common.py KNOWN)")
    args = ap.parse_args(argv)
    names = args.only or list(HARNESSES)
    if args.report_only:
        results = [parse_log(n) for n in names]
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda n: run_one(n, args.seconds, args.strict), names))
    total = 0
    print(f"{'harness':<8} {'executions':>12} {'seconds':>8} {'exec/s':>8}  result")
    for r in results:
        total += r["executions"]
        verdict = f"CRASH (exit {r['rc']}, see {r['log']})" if r["crashed"] else "clean"
        print(f"{r['name']:<8} {r['executions']:>12,} {r['seconds']:>8.0f} "
              f"{r['executions'] / max(r['seconds'], 1e-9):>8,.0f}  {verdict}")
    print(f"{'total':<8} {total:>12,}")
    if args.results:
        write_results(results, "python tests/fuzz/run.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--results", "--report-only")),
            jobs=args.jobs)
    return 1 if any(r["crashed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
