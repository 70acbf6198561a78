"""Each fuzz harness for a short fixed time (tests/fuzz/run.py): a crash fails the test.

The long runs (millions of executions, see the Fuzzing section of bench/RESULTS.md) are done by hand
with ``python tests/fuzz/run.py --seconds N``; this keeps the harnesses themselves working in CI and
gives every CI run a few more minutes of fuzzing. The native target needs clang (libFuzzer) and the
libpcap headers; a missing toolchain fails the test, it does not skip.
"""
from __future__ import annotations

import pytest

from fuzz import run as fuzz_run

SECONDS = 20


@pytest.mark.slow
@pytest.mark.parametrize("harness", fuzz_run.HARNESSES)
def test_fuzz_harness_runs_clean(harness):
    result = fuzz_run.run_one(harness, SECONDS, strict=False)
    log = result["log"].read_text(errors="replace")
    assert not result["crashed"], f"fuzz harness {harness} crashed (exit {result['rc']}):\n{log[-6000:]}"
    assert result["executions"] > 0, f"fuzz harness {harness} ran no input:\n{log[-3000:]}"
    print(f"{harness}: {result['executions']:,} executions in {result['seconds']:.0f} s")
