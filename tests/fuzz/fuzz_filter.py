"""atheris harness over the filter language: parse, then the Python and SQL forms must agree.

Property (tests/fuzz/common.py, check_filter): any text either parses or raises FilterError with a
column inside the text; a parsed filter compiles to a predicate and to SQL that select the same
records of a small archive table, and neither raises.

Run through tests/fuzz/run.py (which adds the dictionary and seeds), or directly::

    python tests/fuzz/fuzz_filter.py -max_total_time=60 CORPUS_DIR

FLOWTAP_FUZZ_STRICT=1 also fails on the known, reported bugs (common.KNOWN).
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["appliance", "common"]):
    import common

CONN = common.filter_db()
TOLERATE = os.environ.get("FLOWTAP_FUZZ_STRICT") != "1"


def test_one_input(data: bytes) -> None:
    common.check_filter(common.decode_filter(data), CONN, tolerate_known=TOLERATE)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
