"""The C fast paths of ``ra`` print and count exactly what the Python path does.

``ra`` on capture files with no filter, -t or -N counts records without building them (-q) and
prints text through native/format.c (appliance.fastpath); ``FLOWTAP_NO_FASTPATH=1`` forces the
Python path. Every shared capture is printed both ways under several option sets and the bytes
compared; random records (edge values included) go through both formatters directly.
"""

from __future__ import annotations

import random
import struct

import pytest

from appliance import capture, fields
from appliance.cli import cli
from appliance.fastpath import TextFast
from appliance.fields import FormatOptions, parse_field_list
from appliance.output import TextWriter

# Every field C prints, aliases included (all but community_id).
C_FIELDS = [name for name, f in fields.FIELDS.items() if f.key in capture.FORMAT_FIELDS]
TUTORIAL = "stime ltime proto saddr sport daddr dport spkts dpkts sbytes dbytes sappbytes dappbytes state"

OPTION_SETS = {
    "csv-n-u": ["-n", "-u", "-c", ","],
    "csv-nn-clock": ["-nn", "-c", ","],
    "aligned-n": ["-n"],
    "aligned-nn-u-all": ["-nn", "-u", "-s", *C_FIELDS],
    "csv-n-u-all": ["-n", "-u", "-c", ",", "-s", *C_FIELDS],
    "csv-n-all-clock": ["-n", "-c", ";", "-s", *C_FIELDS],
    "tab-tutorial-L3": ["-n", "-u", "-c", "\\t", "-L", "3", "-s", *TUTORIAL.split()],
    "aligned-widths-Z": ["-n", "-Z", "b", "-L", "-1", "-s", "saddr:8", "sport", "daddr", "dport:3",
                         "state:2", "flgs", "srcid:4", "dur:5"],
    "csv-widths-Zs": ["-nn", "-u", "-Z", "s", "-c", ",", "-s", "saddr:9", "sport:4", "dir", "state"],
    "named-protos": ["-u", "-c", ",", "-s", "stime", "proto", "saddr", "daddr", "state", "flgs"],
}


def _captures(pcaps_dir):
    found = sorted(p for p in pcaps_dir.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    assert found, f"no captures under {pcaps_dir}"
    return found


def _invoke(runner, args, slow):
    env = {"FLOWTAP_NO_FASTPATH": "1" if slow else ""}
    result = runner.invoke(cli, ["ra", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout_bytes, result.stderr


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_text_is_byte_identical_on_every_capture(runner, pcaps_dir, name):
    args = OPTION_SETS[name]
    for path in _captures(pcaps_dir):
        fast = _invoke(runner, [*args, "-r", str(path)], slow=False)
        slow = _invoke(runner, [*args, "-r", str(path)], slow=True)
        assert fast == slow, f"{path.name} {' '.join(args)}"


def test_quiet_counts_equal_the_record_path(runner, pcaps_dir):
    for path in _captures(pcaps_dir):
        fast = _invoke(runner, ["-q", "-r", str(path)], slow=False)
        slow = _invoke(runner, ["-q", "-r", str(path)], slow=True)
        assert fast == slow, path.name
        assert fast[1] == b"" and fast[2].startswith("packets ")


def test_quiet_count_skips_records(runner, pcaps_dir, monkeypatch):
    calls = []
    real = capture.to_record
    monkeypatch.setattr(capture, "to_record", lambda *a: calls.append(a) or real(*a))
    path = pcaps_dir / "basic" / "tcpreplay-test.pcap"
    code, _, err = _invoke(runner, ["-q", "-r", str(path)], slow=False)
    assert code == 0 and " records 0 " not in err and calls == []
    assert _invoke(runner, ["-q", "-r", str(path)], slow=True) == (code, b"", err)
    assert len(calls) == int(err.split()[3])          # the slow path did build every record


def test_fast_path_is_taken_for_c_fields(runner, pcaps_dir, monkeypatch):
    """The comparisons above are not vacuous: these options print in C, Python sees no record."""
    path = pcaps_dir / "basic" / "tcpreplay-test.pcap"
    python_records = []
    real = capture.to_record
    monkeypatch.setattr(capture, "to_record", lambda *a: python_records.append(a) or real(*a))
    for name in ("csv-n-u-all", "aligned-nn-u-all", "csv-nn-clock"):
        code, out, _ = _invoke(runner, [*OPTION_SETS[name], "-r", str(path)], slow=False)
        assert code == 0 and out.count(b"\n") > 20
    assert python_records == []


def test_unsupported_fields_fall_back(runner, pcaps_dir):
    path = str(pcaps_dir / "basic" / "tcpreplay-test.pcap")
    for args in (["-n", "-u", "-c", ",", "-s", "saddr", "community_id"],   # not in C
                 ["-c", ",", "-s", "saddr", "sport"]):                      # service names
        assert _invoke(runner, [*args, "-r", path], slow=False) == \
            _invoke(runner, [*args, "-r", path], slow=True)


def test_several_inputs_share_labels_and_errors(runner, pcaps_dir, tmp_path):
    a = str(pcaps_dir / "basic" / "tcpreplay-test.pcap")
    b = str(pcaps_dir / "basic" / "pcpp-dns.pcap")
    truncated = str(pcaps_dir / "malformed" / "pcpp-truncated-file.pcap")
    stream = tmp_path / "records.jsonl"
    assert runner.invoke(cli, ["ra", "-r", b, "-w", str(stream)]).exit_code == 0
    for args in (["-n", "-u", "-c", ",", "-L", "7"], ["-n", "-L", "5"], ["-q"]):
        argv = [*args, "-r", a, str(stream), truncated, "/nonexistent.pcap", b]
        fast = _invoke(runner, argv, slow=False)
        assert fast == _invoke(runner, argv, slow=True)
        assert fast[0] == 1 and "truncated dump file" in fast[2]


def test_create_declines_without_a_binary_stream():
    import io
    opts = FormatOptions(numeric=1, utime=True, delimited=True)
    assert TextFast.create(io.StringIO(), parse_field_list(["saddr"]), opts, ",", 0) is None


def test_records_left_to_python_keep_order_and_labels(pcaps_dir, monkeypatch):
    """Without -n, C leaves TCP/UDP records (service names) to Python and prints the others: the
    lines still come out in record order, with labels where TextWriter puts them."""
    path = str(pcaps_dir / "basic" / "tcpreplay-test.pcap")
    flds = parse_field_list(["stime", "proto", "saddr", "sport", "daddr", "dport", "state"])
    opts = FormatOptions(utime=True)
    total = sum(1 for _ in capture.meter_file(path))
    for delimiter, every in ((None, 3), (",", 0), (",", 1), (None, -1)):
        expected = _Sink()
        w = TextWriter(expected, flds, opts, delimiter, every)
        for r in capture.meter_file(path):
            w.write(r)
        in_python = []
        real = capture.to_record
        monkeypatch.setattr(capture, "to_record", lambda *a: in_python.append(1) or real(*a))
        got = _Sink()
        TextFast(got, flds, opts, delimiter, every, "sensor-1").write_capture(path, {})
        monkeypatch.setattr(capture, "to_record", real)
        assert got.text == expected.text
        assert 0 < len(in_python) < total


# --- random records through both formatters ---------------------------------------------------

def _random_raw(rng: random.Random) -> tuple:
    """One raw sensor_flow_t tuple, values drawn to hit the formatters' edge cases."""
    def pick(*choices):
        return rng.choice(choices)

    kind = pick(4, 4, 6, 2)
    proto = pick(6, 17, 1, 58, 132, 0, 2, 47, 200, 255, 0x0806, 0x88CC, 0x1234)
    stime = pick(1_700_000_000_123_456, 0, 999_999, 4_294_967_295_999_999, 4_294_967_296_000_000,
                 12_345_678_901_234_567, rng.randrange(1 << 52), 1_700_000_000_000_000)
    ltime = stime + pick(0, 1, 999_999, 1_000_000, rng.randrange(1 << 40))
    if rng.random() < 0.05:
        ltime = max(0, stime - rng.randrange(1, 5_000_000))          # negative duration
    u64 = lambda: (pick(1 << 63, (1 << 64) - 1, rng.randrange(1 << 64)) if rng.random() < 0.1
                   else pick(0, 1, 9, 10, 99, rng.randrange(1 << 40)))
    u32 = lambda: pick(0, 1, 0xFFFFFFFF, rng.randrange(1 << 32))
    addr = lambda: bytes(rng.randrange(256) if rng.random() < 0.7 else 0 for _ in range(16))
    mac = lambda: pick(b"\0" * 6, bytes(rng.randrange(256) for _ in range(6)))
    history = pick(b"", b"ShADadFf", b"S", b"ShAD" + b"x" * 15)
    state = 8 if proto in (1, 58) and rng.random() < 0.8 else rng.randrange(9)
    return (u64(), stime, ltime, u64(), u64(), u64(), u64(), u64(), u64(), u32(), u32(), u32(), u32(),
            u32(), u32(), u32(), u32(), pick(0xFFFFFFFF, 0, 17), pick(0xFFFFFFFF, 5), u32(), u32(),
            rng.randrange(65536), rng.randrange(65536), proto, pick(0xFFFF, 0, 100), pick(0xFFFF, 4094),
            rng.randrange(1 << 11), addr(), addr(), mac(), mac(), kind, rng.randrange(6), state,
            rng.randrange(6), rng.randrange(14), rng.randrange(256), rng.randrange(256),
            rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.randrange(256),
            rng.randrange(256), rng.randrange(256), history.ljust(19, b"\0"))


@pytest.mark.parametrize("items, opts, delimiter", [
    (C_FIELDS, FormatOptions(numeric=1, utime=True, delimited=True), ","),
    (C_FIELDS, FormatOptions(numeric=2, utime=False, delimited=True), "|"),
    (C_FIELDS, FormatOptions(numeric=2, utime=True), None),
    (C_FIELDS, FormatOptions(numeric=1, zflags="b"), None),
    (["stime", "proto", "saddr", "dir", "daddr", "state", "flgs"], FormatOptions(zflags="d"), None),
    (["saddr:5", "sport:2", "daddr", "dport", "dur:3", "proto:1"], FormatOptions(numeric=1), None),
    (["saddr:5", "sport:2", "daddr", "dport", "ltime:30"],
     FormatOptions(numeric=1, delimited=True, zflags="s"), ", "),
])
def test_random_records_match_python(items, opts, delimiter):
    flds = parse_field_list(items)
    fast = TextFast(_Sink(), flds, opts, delimiter, -1, "sensor-1")
    fmt = fast._line_format()
    assert fmt
    rng = random.Random(f"{items}{opts}{delimiter}")
    left_to_python = 0
    for _ in range(3000):
        raw = _random_raw(rng)
        expected = _python_line(raw, flds, opts, delimiter)
        k, text = capture.format_records(capture.RECORD.pack(*raw), fmt)
        if k:
            assert text.decode() == expected, raw
        else:
            left_to_python += 1
            assert raw[31] not in (2, 4, 6) or (opts.numeric == 0 and raw[23] in (6, 17)) \
                or _overflows(raw), raw
    assert left_to_python < 1000


def _overflows(raw: tuple) -> bool:
    return any(raw[i] + raw[i + 1] >= 1 << 64 for i in (3, 5, 7))


def _python_line(raw, flds, opts, delimiter):
    out = _Sink()
    TextWriter(out, flds, opts, delimiter, -1).write(capture.to_record(raw, "sensor-1"))
    return out.text


class _Sink:
    """A text stream with a binary buffer (what TextFast needs), keeping what was written."""

    encoding, errors = "utf-8", "strict"

    def __init__(self):
        self.text = ""
        self.buffer = self

    def write(self, s):
        self.text += s if isinstance(s, str) else bytes(s).decode()

    def flush(self):
        pass


def test_abi_struct_sizes_match_the_header():
    assert capture.ffi.sizeof("sensor_format_spec_t") == 4 + 4 + 4 + 8 + 64 + 64 * 8
    assert struct.calcsize("<BBBBHH") == capture.ffi.sizeof("sensor_format_column_t")
