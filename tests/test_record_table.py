"""appliance/record.py is the one column table: the C side agrees with it, the Python side is
derived from it, and a column added to it reaches the archive, ``ra -s``, JSON and racluster."""
from __future__ import annotations

import json
import re
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import archive, capture, cluster, fields, ipfix, query, record
from appliance.capture import ffi, lib

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = ROOT.parent / "shared" / "pcaps" / "basic" / "tcpreplay-test.pcap"


def _strings(array) -> list[str]:
    """A NULL-terminated ``const char *[]`` of the native module."""
    out, i = [], 0
    while array[i] != ffi.NULL:
        out.append(ffi.string(array[i]).decode())
        i += 1
    return out


def _member(c_field: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(\w+)(?:\[(\d)\])?", c_field)
    assert m, c_field
    return m.group(1), None if m.group(2) is None else int(m.group(2))


# --- the C side ---------------------------------------------------------------------------------

def test_every_c_field_is_a_member_of_the_record_struct():
    struct_fields = dict(ffi.typeof("sensor_flow_t").fields)
    for c in record.COLUMNS:
        if c.c_field is None:
            continue
        name, index = _member(c.c_field)
        assert name in struct_fields, f"{c.name}: sensor_flow_t has no {name}"
        ffi.offsetof("sensor_flow_t", name)
        ctype = struct_fields[name].type
        if index is not None:
            assert ctype.kind == "array" and index < ctype.length, c.c_field
    assert record.BY_NAME["srcid"].c_field is None          # the sensor's id, not the record's


def test_raw_tuple_layout_is_the_struct():
    assert [name for name, _ in capture.RECORD_LAYOUT] == [n for n, _ in ffi.typeof("sensor_flow_t").fields]
    assert capture.RECORD_SIZE == ffi.sizeof("sensor_flow_t")
    for i, (name, _) in enumerate(capture.RECORD_LAYOUT):
        before = "".join(code for _, code in capture.RECORD_LAYOUT[:i])
        assert ffi.offsetof("sensor_flow_t", name) == struct.calcsize("<" + before), name


def test_store_binds_the_stored_columns_in_table_order():
    assert _strings(lib.sensor_store_columns) == [c.name for c in record.STORED]


def test_c_merge_rules_and_printed_fields_are_the_tables():
    printed = [c for c in record.COLUMNS if c.c_prints]
    for c in printed:
        field = getattr(lib, "SENSOR_FIELD_" + c.name.upper())
        rule = lib.sensor_cluster_merge_rule(field)
        assert rule != ffi.NULL and ffi.string(rule).decode() == c.merge, c.name
    assert lib.sensor_cluster_merge_rule(lib.SENSOR_FIELD_TRANS) == ffi.NULL     # racluster's own
    assert lib.sensor_cluster_merge_rule(lib.SENSOR_FIELD_COUNT) == ffi.NULL
    assert lib.SENSOR_FIELD_COUNT == len(printed) + 1
    assert set(capture.FORMAT_FIELDS) == {c.name for c in printed} | {"trans"}
    assert all(c.merge in record.MERGES for c in record.COLUMNS)


def test_ipfix_elements_are_the_tables():
    seen: dict[str, set[str]] = {}
    for template in (*ipfix.BIFLOW_TEMPLATES.values(), *ipfix.UNIFLOW_TEMPLATES.values()):
        for f in template.fields:
            if f.column in record.BY_NAME:
                assert f.name in record.BY_NAME[f.column].ipfix, (f.column, f.name)
                seen.setdefault(f.column, set()).add(f.name)
    assert seen == {c.name: set(c.ipfix) for c in record.COLUMNS if c.ipfix}


# --- the Python side is derived -----------------------------------------------------------------

def test_archive_schema_is_the_tables():
    assert archive.FLOW_COLUMNS == tuple((c.name, c.sql) for c in record.COLUMNS if c.sql)
    assert archive.DERIVED == {"pkts": "spkts + dpkts", "bytes": "sbytes + dbytes",
                               "appbytes": "sappbytes + dappbytes"}


def test_fields_and_query_columns_are_the_tables():
    for c in record.FIELD_COLUMNS:
        f = fields.FIELDS[c.name]
        assert (f.key, f.label, f.kind, f.width, f.descending, f.centred) == \
            (c.name, c.label, c.kind, c.width, c.descending, c.centred)
    assert fields.RECORD_KEYS == tuple(c.name for c in record.COLUMNS if c.label)
    assert query.RECORD_ORDER == record.NAMES
    assert query.IDENTIFIERS == frozenset(record.NAMES)


def test_cluster_rules_are_the_tables():
    by_rule = {rule: {c.name for c in record.COLUMNS if c.merge == rule} for rule in record.MERGES}
    assert set(cluster.SUMS) == by_rule["sum"]
    assert set(cluster.LAST) == by_rule["last"]
    assert set(cluster.IDENTITY) == by_rule["identity"]
    assert set(cluster.RTT) == by_rule["rtt"]
    assert {s for s, _ in cluster.PAIRS} == {c.name for c in record.COLUMNS if c.pair}
    with pytest.raises(ValueError):
        record.merging("median")


def test_to_record_gives_every_column_in_table_order():
    raws = list(capture.meter_file_raw(str(CAPTURE)))
    assert raws
    for raw in raws:
        assert tuple(capture.to_record(raw, "s1")) == record.NAMES


# --- C owns the names ---------------------------------------------------------------------------

def test_names_come_from_the_native_module():
    assert capture.CAUSES == tuple(_strings_n(lib.sensor_cause_names, 6))
    assert capture.CAUSES[lib.SENSOR_CAUSE_SHUTDOWN] == "Shutdown"
    assert capture.DIRS == tuple(d.strip() for d in _strings_n(lib.sensor_dir_names, 6))
    assert capture.TCP_FLAG_LETTERS == ffi.string(lib.sensor_tcp_flag_letters).decode()
    assert ipfix.TCP_FLAG_LETTERS == capture.TCP_FLAG_LETTERS
    assert cluster._FLAG_ORDER == ffi.string(lib.sensor_cluster_letter_order).decode()
    assert fields.IP_PROTO_NAMES[6] == "tcp" and fields.ETHER_PROTO_NAMES[0x0806] == "arp"
    assert capture.ICMP4_NAMES[8] == "ECO" and capture.ICMP6_NAMES[128] == "ECO"
    assert capture.ADDR_IP4 == lib.SENSOR_ADDR_IP4 and capture.FLG_UNREACH == lib.SENSOR_FLG_ICMP_UNREACH


def _strings_n(array, n: int) -> list[str]:
    return [ffi.string(array[i]).decode() for i in range(n)]


# --- a throw-away column through the table -----------------------------------------------------

# Runs in a subprocess: record.py's source with one more entry is loaded as appliance.record
# before anything imports it, so every derived table sees the extra column.
_PATCHED = r'''
import json, sys, types
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root))
import appliance
src = (root / "appliance" / "record.py").read_text()
end = src.index("\n)\n", src.index("COLUMNS: tuple"))
extra = ('\n    _c("xpkts", "pkts[0]", "pkts_0 * 2 + 1", "INTEGER", "XPkts", 7, "int", "sum",'
         ' c_prints=False),')
mod = types.ModuleType("appliance.record")
mod.__file__ = str(root / "appliance" / "record.py")
sys.modules["appliance.record"] = mod
exec(compile(src[:end] + extra + src[end:], mod.__file__, "exec"), mod.__dict__)
appliance.record = mod
from click.testing import CliRunner
from appliance import archive
from appliance.cli import cli
cap, tmp = sys.argv[2], sys.argv[3]
def run(*args):
    r = CliRunner().invoke(cli, list(args), prog_name="flowtap")
    return r.exit_code, r.stdout
out = {
    "schema": [n for n, _ in archive.FLOW_COLUMNS],
    "ra": run("ra", "-n", "-s", "spkts", "xpkts", "-r", cap),
    "json": run("ra", "-n", "-M", "json", "-s", "spkts", "xpkts", "-r", cap),
    "racluster": run("racluster", "-n", "-m", "proto", "-s", "proto", "spkts", "xpkts", "trans",
                     "-r", cap),
    "record": run("record", "-q", "-r", cap, "-d", tmp),
}
arch = sorted((Path(tmp) / "archive").glob("flows-*.sqlite"))
out["archive"] = run("ra", "-n", "-M", "json", "-s", "spkts", "xpkts", "-r", str(arch[0]))
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def extra_column(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extra")
    p = subprocess.run([sys.executable, "-c", _PATCHED, str(ROOT), str(CAPTURE), str(tmp)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), tmp


def test_a_new_column_reaches_the_archive_schema(extra_column):
    out, tmp = extra_column
    assert out["schema"][-1] == "xpkts"
    assert out["record"][0] == 0
    (path,) = (tmp / "archive").glob("flows-*.sqlite")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(flows)")]
    assert columns[-1] == "xpkts"
    # store.c binds what it knows (its column list is C's: a real column adds a member and a put),
    # and the archive is read with the column in every record.
    code, text = out["archive"]
    rows = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and rows and all(r["xpkts"] is None for r in rows)


def test_a_new_column_prints_with_ra_s_and_json(extra_column):
    out, _ = extra_column
    code, text = out["ra"]
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["SrcPkts", "XPkts"]
    for line in lines[1:]:
        spkts, xpkts = map(int, line.split())
        assert xpkts == 2 * spkts + 1
    code, text = out["json"]
    rows = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and len(rows) == len(lines) - 1
    assert all(r["xpkts"] == 2 * r["spkts"] + 1 for r in rows)


def test_a_new_column_merges_in_racluster_by_its_rule(extra_column):
    out, _ = extra_column
    code, text = out["racluster"]
    assert code == 0
    lines = text.splitlines()[1:]
    assert lines
    for line in lines:
        proto, spkts, xpkts, trans = line.split()
        assert int(xpkts) == 2 * int(spkts) + int(trans)       # summed: each record's 2 s + 1
