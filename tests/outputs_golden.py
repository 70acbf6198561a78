"""Byte-identity harness: digests of every command's output on every capture of ../shared/pcaps.

Run it before a behaviour-preserving change and after, and compare::

    .venv/bin/python tests/outputs_golden.py /tmp/golden-before.json          # old code
    .venv/bin/python tests/outputs_golden.py /tmp/golden-after.json --compare /tmp/golden-before.json

or, any time, against an older version: a copy of its ``appliance/`` (native module built) in DIR,
``--tree DIR`` (``git show REV:appliance/x.py`` for each file, or ``git archive`` and ``make build``).

Per capture (MANIFEST.tsv lists them) it runs ``flowtap ra`` (default fields; every field in one
``-s``, once without ``community_id`` so C prints the lines and once with it so Python does; ``-c ,``;
``-M json``; ``-Z b``; named ports), ``racluster`` (default key, ``-m saddr daddr``, ``-m proto
dport``), ``rasort -m bytes``, then ``flowtap record`` into a temporary directory and the same
commands on its archive (where racluster -m runs in C, and in SQL with the C paths off), a dump of
the archive's schema and ``flows`` rows, and the IPFIX encoding (bi- and uniflow) of the capture's
records. It stores sha256 digests of stdout, stderr (wall-clock free) and exit status of each.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT.parent / "shared" / "pcaps"
TREE = ROOT                 # the source tree whose appliance package runs (--tree)
ENV = {**os.environ, "TZ": "UTC", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"}
ENV.pop("FLOWTAP_NO_FASTPATH", None)
NO_FASTPATH = {**ENV, "FLOWTAP_NO_FASTPATH": "1"}
SUBPROCESS = False


def _all_fields() -> list[str]:
    sys.path.insert(0, str(TREE))
    from appliance import fields
    return sorted(fields.FIELDS)      # not the table's order: that may change


def _readers(fields: list[str]) -> dict[str, list[str]]:
    """ra/racluster/rasort argument lists (before -r) by name."""
    c_fields = [f for f in fields if f != "community_id"]
    return {
        "ra": ["ra"], "ra-n": ["ra", "-n"], "ra-nn-u": ["ra", "-nn", "-u"],
        "ra-s-c": ["ra", "-n", "-s", *c_fields], "ra-s-all": ["ra", "-n", "-s", *fields],
        "ra-s-named": ["ra", "-s", *fields],
        "ra-csv": ["ra", "-n", "-u", "-c", ",", "-s", *fields],
        "ra-csv-c": ["ra", "-n", "-c", ",", "-s", *c_fields],
        "ra-json": ["ra", "-n", "-M", "json", "-s", *fields], "ra-json-default": ["ra", "-M", "json"],
        "ra-Zb": ["ra", "-n", "-Z", "b"],
        "racluster": ["racluster", "-n"],
        "racluster-all": ["racluster", "-n", "-s", *c_fields],
        "racluster-saddr-daddr": ["racluster", "-n", "-m", "saddr", "daddr"],
        "racluster-saddr-daddr-all": ["racluster", "-n", "-m", "saddr", "daddr", "-s", *c_fields],
        "racluster-proto-dport": ["racluster", "-n", "-m", "proto", "dport"],
        "racluster-saddr24-json": ["racluster", "-n", "-m", "saddr/24", "-M", "json", "-s", *fields],
        "racluster-w": ["racluster", "-w", "-"],
        "racluster-w-some": ["racluster", "-n", "-s", "sgap", "smaxsz", "sport", "-w", "-"],
        "ra-w": ["ra", "-w", "-"],
        "rasort-bytes": ["rasort", "-n", "-m", "bytes"],
        "rasort-bytes-all": ["rasort", "-n", "-m", "bytes", "-s", *fields],
    }


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(args: list[str], env: dict[str, str] = ENV) -> str:
    """One reader command's exit status and output digests: in this process through click's
    runner (a second per command saved on 80 captures; ``--subprocess`` checks it prints the same)."""
    if SUBPROCESS:
        p = subprocess.run(_flowtap(*args), capture_output=True, env=env, timeout=600)
        return f"rc={p.returncode} out={_digest(p.stdout)} err={_digest(p.stderr)}"
    from click.testing import CliRunner
    from appliance.cli import cli
    nofast = {"FLOWTAP_NO_FASTPATH": env.get("FLOWTAP_NO_FASTPATH")}
    result = CliRunner().invoke(cli, args, env=nofast, prog_name="flowtap")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return f"rc={result.exit_code} out={_digest(result.stdout_bytes)} err={_digest(result.stderr_bytes)}"


def _flowtap(*args: str) -> list[str]:
    """The command line of ``flowtap ARGS`` running TREE's appliance package."""
    return [sys.executable, "-P", "-m", "appliance.cli", *args]


def _dump(archive_dir: Path) -> str:
    """The schema and the flows rows of every archive file, in name and rowid order (not the
    names: a capture without packets makes an archive named by the wall clock)."""
    h = hashlib.sha256()
    for f in sorted(archive_dir.glob("flows-*.sqlite")):
        conn = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
        try:
            for (sql,) in conn.execute("SELECT sql FROM sqlite_master ORDER BY name"):
                h.update(repr(sql).encode())
            for row in conn.execute("SELECT * FROM flows ORDER BY rowid"):
                h.update(repr(row).encode())
        finally:
            conn.close()
    return h.hexdigest()


def _ipfix(cap: str) -> dict[str, str]:
    """Digests of the IPFIX records the exporter encodes from the capture's records."""
    sys.path.insert(0, str(TREE))
    from appliance import capture, ipfix
    out = {}
    try:
        records = list(capture.meter_file(cap))
        error = ""
    except capture.CaptureError as e:
        records, error = [], str(e)
    out["records"] = _digest(repr(records).encode() + error.encode())
    for name, uniflow in (("ipfix-biflow", False), ("ipfix-uniflow", True)):
        enc = ipfix.Encoder(uniflow=uniflow)
        h = hashlib.sha256(b"".join(enc.template_records()))
        try:
            for tid, data in enc.encode(records):
                h.update(tid.to_bytes(2, "big") + data)
        except Exception as e:      # a failure is an output too
            h.update(repr(e).encode())
        out[name] = h.hexdigest()
    return out


def capture_digests(rel: str) -> tuple[str, dict[str, str]]:
    """Every digest of one capture (runs in a worker process)."""
    cap = str(PCAPS / rel)
    readers = _readers(_all_fields())
    out = {f"cap:{name}": _run([*args, "-r", cap]) for name, args in readers.items()}
    out.update(_ipfix(cap))
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        p = subprocess.run(_flowtap("record", "-q", "-r", cap, "-d", tmp), capture_output=True,
                           env=ENV, timeout=600)
        out["record"] = f"rc={p.returncode}"
        archive = Path(tmp) / "archive"
        out["archive-dump"] = _dump(archive)
        if any(archive.glob("flows-*.sqlite")):
            for name, args in readers.items():
                out[f"arc:{name}"] = _run([*args, "-r", str(archive)])
            for name in ("racluster-saddr-daddr-all", "racluster-proto-dport", "racluster-all"):
                out[f"arc-sql:{name}"] = _run([*readers[name], "-r", str(archive)], NO_FASTPATH)
    return rel, out


def captures() -> list[str]:
    lines = (PCAPS / "MANIFEST.tsv").read_text().splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file of digests to write")
    ap.add_argument("--compare", help="golden JSON file: exit 1 on any difference")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="capture paths (MANIFEST names) to run")
    ap.add_argument("--subprocess", action="store_true", help="run each command as its own process")
    ap.add_argument("--tree", help="run this source tree's appliance package (a copy of an older "
                    "version, with its built native module); default: this checkout")
    args = ap.parse_args()
    global SUBPROCESS, TREE
    SUBPROCESS = args.subprocess
    TREE = Path(args.tree).resolve() if args.tree else ROOT
    os.environ.update(TZ="UTC", LC_ALL="C.UTF-8", PYTHONPATH=str(TREE))
    ENV["PYTHONPATH"] = NO_FASTPATH["PYTHONPATH"] = str(TREE)
    time.tzset()
    caps = args.only or captures()
    t0 = time.monotonic()
    with multiprocessing.Pool(args.jobs) as pool:
        results = dict(pool.imap_unordered(capture_digests, caps))
    Path(args.out).write_text(json.dumps(dict(sorted(results.items())), indent=1, sort_keys=True))
    print(f"{len(results)} captures, {sum(map(len, results.values()))} outputs in "
          f"{time.monotonic() - t0:.0f} s -> {args.out}")
    if not args.compare:
        return 0
    gold = json.loads(Path(args.compare).read_text())
    diffs = [f"{cap} {k}" for cap in results for k in sorted(set(results[cap]) | set(gold.get(cap, {})))
             if results[cap].get(k) != gold.get(cap, {}).get(k)]
    for d in diffs:
        print("DIFFERS:", d)
    print("identical" if not diffs else f"{len(diffs)} outputs differ")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
