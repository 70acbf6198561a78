"""cffi API-mode build of the EVE alert line parser into appliance._alertparse (apart from
appliance._native, so that each builds alone).

alertparse.h is the only header cffi sees: lines starting with '#' are dropped and the rest is the cdef.

Example::

    cd /work/main && .venv/bin/python native/build_alertparse.py
"""
import os
import pathlib
import shutil
import tempfile

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent


def cdef_text() -> str:
    """alertparse.h without preprocessor lines (the form cffi's cdef parser accepts)."""
    lines = (HERE / "alertparse.h").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "appliance._alertparse",
    '#include "alertparse.h"',
    sources=["native/alertparse.c"],     # relative to the project root, as setuptools wants
    include_dirs=["native"],
    # No -ffast-math: the times must be the same doubles as Python's.
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-O2"]
    + (["-Werror"] if os.environ.get("FLOWTAP_WERROR") else []),
)


def build_in_place() -> pathlib.Path:
    """Compile into appliance/ without setuptools reading the project's pyproject.toml (it refuses
    the license table outside pip): in a scratch directory that sees only native/."""
    with tempfile.TemporaryDirectory() as scratch:
        os.symlink(HERE, pathlib.Path(scratch) / "native")
        os.chdir(scratch)
        built = pathlib.Path(ffibuilder.compile(tmpdir=scratch, verbose=True))
        target = HERE.parent / "appliance" / built.name
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
