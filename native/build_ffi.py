"""cffi API-mode build of the native sensor core into appliance._native.

sensor.h is the only header cffi sees: lines starting with '#' are dropped and the rest is the cdef.
"""
import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["sensor.c", "decode.c", "flowtable.c", "pcapng.c", "siphash.c", "format.c", "store.c", "sha1.c", "cluster.c"]


def cdef_text() -> str:
    """sensor.h without preprocessor lines (the form cffi's cdef parser accepts)."""
    lines = (HERE / "sensor.h").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "appliance._native",
    '#include "sensor.h"',
    # setuptools insists on paths relative to setup.py's folder (the project root).
    sources=[f"native/{name}" for name in SOURCES],
    include_dirs=["native"],
    libraries=["pcap", "sqlite3"],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE", "-pthread"]
    + (["-Werror"] if os.environ.get("FLOWTAP_WERROR") else []),
    extra_link_args=["-pthread"],             # sensor.c reads capture files ahead on a thread
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose=True)
