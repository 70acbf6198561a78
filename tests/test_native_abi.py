"""The C record struct and the Python view of it agree, field for field."""
import re
import struct
from pathlib import Path

from appliance import capture
from appliance._native import ffi, lib

ROOT = Path(__file__).resolve().parent.parent


def test_abi_version_matches():
    assert lib.SENSOR_ABI_VERSION == capture.ABI_VERSION


def test_record_size_matches_struct_format():
    assert ffi.sizeof("sensor_flow_t") == capture.RECORD.size == 208


def test_every_field_offset_matches_the_format():
    prefix = "<"
    for name, code in capture.RECORD_LAYOUT:
        assert ffi.offsetof("sensor_flow_t", name) == struct.calcsize(prefix), name
        prefix += code
    assert struct.calcsize(prefix) == ffi.sizeof("sensor_flow_t")


def test_layout_covers_every_c_field():
    fields = [name for name, _ in ffi.typeof("sensor_flow_t").fields]
    assert fields == [name for name, _ in capture.RECORD_LAYOUT]


def test_decode_error_names_cover_every_reason():
    assert len(capture.DECODE_ERRORS) == lib.SENSOR_DERR_COUNT


def test_sensor_header_has_no_directive_but_guard_and_includes():
    """build_ffi.py drops '#' lines; anything else there would silently change the cdef."""
    allowed = re.compile(r"#(ifndef FLOWTAP_SENSOR_H|define FLOWTAP_SENSOR_H|endif|include <std(int|def)\.h>)$")
    for line in (ROOT / "native" / "sensor.h").read_text().splitlines():
        if line.lstrip().startswith("#"):
            assert allowed.match(line.strip()), line
