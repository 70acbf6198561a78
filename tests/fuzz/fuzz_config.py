"""atheris harness over the config loader: a file or a parsed-TOML dict loads or raises ConfigError.

Property (tests/fuzz/common.py): ``config.load(path)`` on arbitrary bytes, and ``config.from_dict``
on arbitrary TOML-shaped data, return a Config or raise ConfigError and nothing else; a loaded
config has its ranged values in range and survives a TOML round trip unchanged.

Run through tests/fuzz/run.py, or directly::

    python tests/fuzz/fuzz_config.py -max_total_time=60 CORPUS_DIR

FLOWTAP_FUZZ_STRICT=1 also fails on the known, reported bugs (common.KNOWN).
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["appliance", "common", "tomllib"]):
    import common

SCRATCH = common.ConfigFile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                          f"config-scratch-{os.getuid()}.toml"))
TOLERATE = os.environ.get("FLOWTAP_FUZZ_STRICT") != "1"


def test_one_input(data: bytes) -> None:
    kind, value = common.decode_config(data)
    if kind == "bytes":
        common.check_config_bytes(value, SCRATCH, tolerate_known=TOLERATE)
    else:
        common.check_config_dict(value)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
