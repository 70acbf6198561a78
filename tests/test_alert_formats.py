"""alert_formats: every format's good lines, bad lines, detection, sid maps, unified2, hostile input.

Lines are written from the formats' documentation (see the module's docstring and
tests/alerts/README.md); the fixtures in tests/alerts/ must fall inside real sessions of their
captures, which this file checks against flowtap's own records of those captures.
"""
from __future__ import annotations

import io
import ipaddress
import json
import pathlib
import re
import struct
import time

import pytest

from appliance import alert_formats as af
from appliance.alert_types import PORT_PROTOS, Alert, AlertError
from appliance.cli import cli

ALERTS = pathlib.Path(__file__).parent / "alerts"
# 2004-05-13 10:17:08.222534 UTC: the GET of basic/dpkt-http.pcap
T_GET = 1084443428.222534
DPKT_SPAN = (1084443427.311224, 1084443457.704928)
TCPREPLAY_SPAN = (1278472579.466743, 1278472582.723492)


def read_all(data: bytes | str, fmt=None, **kw) -> tuple[list[Alert], af.ReadStats]:
    stats = af.ReadStats()
    raw = data.encode() if isinstance(data, str) else data
    return list(af.read(io.BytesIO(raw), fmt, stats=stats, **kw)), stats


def eve(**over) -> str:
    """An EVE alert line (Suricata user guide's example, on dpkt-http's GET), fields overridden."""
    obj = {"timestamp": "2004-05-13T12:17:08.222534+0200", "flow_id": 1394658463512307,
           "event_type": "alert", "src_ip": "145.254.160.237", "src_port": 3372,
           "dest_ip": "65.208.228.223", "dest_port": 80, "proto": "TCP",
           "community_id": "1:D0Hb5PnRilB52ktTszXCb9PSY8M=",
           "alert": {"action": "allowed", "gid": 1, "signature_id": 1000001, "rev": 1,
                     "signature": "LOCAL GET", "category": "Misc activity", "severity": 3},
           "app_proto": "http"}
    for key, value in over.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj)


# --- fixtures against the captures -------------------------------------------------------------

def sessions(runner, capture: pathlib.Path) -> list[dict]:
    fields = ["stime", "ltime", "proto", "saddr", "sport", "daddr", "dport", "community_id"]
    result = runner.invoke(cli, ["ra", "-n", "-u", "-M", "json", "-r", str(capture), "-s", *fields])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def session_of(alert: Alert, records: list[dict]) -> dict | None:
    """The record with the alert's protocol and endpoints (ICMP: addresses) that spans its time."""
    ported = alert.proto in PORT_PROTOS
    for r in records:
        ends = {(r["saddr"], r["sport"] if ported else None), (r["daddr"], r["dport"] if ported else None)}
        if (r["proto"] == alert.proto and {(alert.saddr, alert.sport), (alert.daddr, alert.dport)} == ends
                and r["stime"] <= alert.time <= r["ltime"]):
            return r
    return None


@pytest.mark.parametrize("name, fmt, capture, span", [
    ("dpkt-http.eve.json", "eve", "dpkt-http.pcap", DPKT_SPAN),
    ("dpkt-http.fast", "fast", "dpkt-http.pcap", DPKT_SPAN),
    ("dpkt-http.snort3.json", "snort3-json", "dpkt-http.pcap", DPKT_SPAN),
    ("dpkt-http.snort3.csv", "snort3-csv", "dpkt-http.pcap", DPKT_SPAN),
    ("tcpreplay-test.eve.json", "eve", "tcpreplay-test.pcap", TCPREPLAY_SPAN),
    ("tcpreplay-test.fast", "fast", "tcpreplay-test.pcap", TCPREPLAY_SPAN),
])
def test_fixture_alerts_fall_in_sessions_of_their_capture(runner, pcaps_dir, name, fmt, capture, span):
    path = ALERTS / name
    assert af.detect(path.read_bytes()[:4096]) == fmt
    alerts, stats = read_all(path.read_bytes(), span=span, sid_map=af.load_sid_map(ALERTS / "local.rules"))
    assert stats.bad == 0 and stats.read == len(alerts) >= 5
    records = sessions(runner, pcaps_dir / "basic" / capture)
    unmatched = []
    for a in alerts:
        r = session_of(a, records)
        if r is None:
            unmatched.append(a.msg)
        elif a.community_id is not None:
            assert a.community_id == r["community_id"], a.raw
    assert len(unmatched) == 1 and "(matches no session)" in unmatched[0]


def test_fixtures_agree_across_formats():
    """The same five alerts of dpkt-http in four formats; the csv's messages from local.rules."""
    sid_map = af.load_sid_map(ALERTS / "local.rules")
    got = {}
    for name in ("dpkt-http.eve.json", "dpkt-http.fast", "dpkt-http.snort3.json", "dpkt-http.snort3.csv"):
        alerts, _ = read_all((ALERTS / name).read_bytes(), year=2004, sid_map=sid_map)
        got[name] = [(a.time, a.gid, a.sid, a.rev, a.msg, a.proto, a.saddr, a.sport, a.daddr, a.dport)
                     for a in alerts]
    first = got.pop("dpkt-http.eve.json")
    assert first[0] == (T_GET, 1, 1000001, 1, "LOCAL HTTP GET [download page] from a browser", 6,
                        "145.254.160.237", 3372, "65.208.228.223", 80)
    assert all(v == first for v in got.values())


# --- EVE ---------------------------------------------------------------------------------------

def test_eve_alert_fields():
    a = af.parse_line("eve", eve())
    assert (a.time, a.gid, a.sid, a.rev, a.msg, a.proto) == (T_GET, 1, 1000001, 1, "LOCAL GET", 6)
    assert (a.saddr, a.sport, a.daddr, a.dport) == ("145.254.160.237", 3372, "65.208.228.223", 80)
    assert (a.priority, a.classification, a.action, a.app_proto) == (3, "Misc activity", "allowed", "http")
    assert (a.community_id, a.flow_id, a.format, a.raw) == ("1:D0Hb5PnRilB52ktTszXCb9PSY8M=",
                                                           1394658463512307, "eve", eve())


@pytest.mark.parametrize("stamp", ["2004-05-13T12:17:08.222534+0200", "2004-05-13T12:17:08.222534+02:00",
                                   "2004-05-13T10:17:08.222534Z", "2004-05-13T10:17:08.222534+0000",
                                   "2004-05-13T10:17:08.222534", "2004-05-13T04:47:08.222534-0530",
                                   "2004-05-13T04:47:08.222534-05:30", "2004-05-12T23:17:08.222534-1100"])
def test_eve_utc_offsets(stamp):
    assert af.parse_line("eve", eve(timestamp=stamp)).time == T_GET


def test_eve_ipv6_and_icmp_without_ports():
    v6 = af.parse_line("eve", eve(src_ip="2001:0DB8:0000:0000:0000:0000:0000:0001", dest_ip="2001:db8::2"))
    assert (v6.saddr, v6.daddr) == ("2001:db8::1", "2001:db8::2")
    icmp = af.parse_line("eve", eve(proto="ICMP", src_port=None, dest_port=None, icmp_type=8, icmp_code=0))
    assert (icmp.proto, icmp.sport, icmp.dport) == (1, None, None)
    icmp6 = af.parse_line("eve", eve(proto="IPv6-ICMP", src_ip="fe80::1", dest_ip="fe80::2", src_port=None,
                                     dest_port=None, icmp_type=128, icmp_code=0))
    assert (icmp6.proto, icmp6.sport, icmp6.dport) == (58, None, None)
    assert af.parse_line("eve", eve(proto=17)).proto == 17


def test_eve_other_events_are_skipped_and_counted():
    lines = [eve(), eve(event_type="flow", alert=None, flow={"pkts_toserver": 3}),
             json.dumps({"timestamp": "2004-05-13T12:17:09+0200", "event_type": "stats", "stats": {"uptime": 3}}),
             eve(event_type="dns", alert=None), "", "# a comment", eve()]
    alerts, stats = read_all("\n".join(lines) + "\n")
    assert (len(alerts), stats.read, stats.skipped, stats.bad) == (2, 2, 5, 0)
    assert af.parse_line("eve", eve(event_type="http")) is None


def test_eve_message_from_the_sid_map_when_missing():
    line = eve(alert={"gid": 1, "signature_id": 2000001, "rev": 1})
    assert af.parse_line("eve", line, sid_map={(1, 2000001): "from the map"}).msg == "from the map"
    assert af.parse_line("eve", line).msg == ""


# --- alert_fast ----------------------------------------------------------------------------------

FAST_TAIL = "{TCP} 145.254.160.237:3372 -> 65.208.228.223:80"


@pytest.mark.parametrize("line, msg", [
    # Snort 2 alert_fast without and with -y (MM/DD/YY), two spaces after the time
    ("05/13-10:17:08.222534  [**] [1:1000001:1] LOCAL GET [**] [Classification: Misc activity] "
     "[Priority: 3] " + FAST_TAIL, "LOCAL GET"),
    ("05/13/04-10:17:08.222534  [**] [1:1000001:1] LOCAL GET [**] [Classification: Misc activity] "
     "[Priority: 3] " + FAST_TAIL, "LOCAL GET"),
    # Snort 3: quoted message, YY/MM/DD with -y, an action, AppID, no classification, interface
    ('04/05/13-10:17:08.222534 [**] [1:1000001:1] "LOCAL GET" [**] [Priority: 3] [AppID: HTTP] ' + FAST_TAIL,
     "LOCAL GET"),
    ('05/13-10:17:08.222534 [drop] [**] [1:1000001:1] <eth0> "LOCAL [GET] [**] x" [**] '
     "[Classification: Misc activity] [Priority: 3] " + FAST_TAIL, "LOCAL [GET] [**] x"),
    # Suricata fast.log: MM/DD/YYYY, [Drop]
    ("05/13/2004-10:17:08.222534  [Drop] [**] [1:1000001:1] ET [brackets] ok [**] "
     "[Classification: Misc activity] [Priority: 3] " + FAST_TAIL, "ET [brackets] ok"),
])
def test_fast_dialects(line, msg):
    a = af.parse_line("fast", line, year=2004)
    assert (a.time, a.gid, a.sid, a.rev, a.msg, a.proto) == (T_GET, 1, 1000001, 1, msg, 6)
    assert (a.saddr, a.sport, a.daddr, a.dport, a.priority) == ("145.254.160.237", 3372, "65.208.228.223", 80, 3)
    assert a.raw == line and a.format == "fast"


def test_fast_fields():
    a = af.parse_line("fast", "05/13/2004-10:17:08.222534  [wDrop] [**] [1:2:3] m [**] [Classification: "
                              "Potentially Bad Traffic] [Priority: 2] {UDP} 10.0.0.1:53 -> 10.0.0.2:4000")
    assert (a.action, a.classification, a.priority, a.proto, a.sport) == (
        "wDrop", "Potentially Bad Traffic", 2, 17, 53)


@pytest.mark.parametrize("tail, want", [
    # Snort: IPv6 ports after the last colon; no ports but for TCP/UDP
    ("{TCP} 2001:db8::1:80 -> 2001:db8::2:4000", (6, "2001:db8::1", 80, "2001:db8::2", 4000)),
    ("{ICMP} fe80::1 -> fe80::a3a0:d918:37ff:53f2", (58, "fe80::1", None, "fe80::a3a0:d918:37ff:53f2", None)),
    ("{IPV6-ICMP} 2001:db8::1 -> 2001:db8::2", (58, "2001:db8::1", None, "2001:db8::2", None)),
    ("{ICMP} 10.0.0.1 -> 10.0.0.2", (1, "10.0.0.1", None, "10.0.0.2", None)),
    ("{TCP} [2001:db8::1]:80 -> [2001:db8::2]:4000", (6, "2001:db8::1", 80, "2001:db8::2", 4000)),
    ("{PROTO:047} 10.0.0.1 -> 10.0.0.2", (47, "10.0.0.1", None, "10.0.0.2", None)),
])
def test_fast_addresses(tail, want):
    a = af.parse_line("fast", f'05/13-10:17:08.222534 [**] [1:2:3] "m" [**] [Priority: 3] {tail}', year=2004)
    assert (a.proto, a.saddr, a.sport, a.daddr, a.dport) == want


def test_fast_suricata_prints_icmp_type_and_code_as_ports():
    line = ("05/13/2004-10:17:08.222534  [**] [1:2:3] m [**] [Classification: (null)] [Priority: 3] "
            "{IPv6-ICMP} 2001:db8::1:128 -> 2001:db8::2:0")
    a = af.parse_line("fast", line)
    assert (a.proto, a.saddr, a.sport, a.daddr, a.dport, a.classification) == (58, "2001:db8::1", None,
                                                                               "2001:db8::2", None, None)


# --- Snort 3 alert_json and alert_csv -----------------------------------------------------------

def s3(**fields) -> str:
    """A Snort 3 alert_json line as the logger prints it: '{ "k" : v, ... }'."""
    return "{" + ",".join(f' "{k}" : {json.dumps(v)}' for k, v in fields.items()) + " }"


def test_snort3_json_any_subset_of_fields():
    ap = s3(timestamp="04/05/13-10:17:08.222534", proto="TCP", src_ap="145.254.160.237:3372",
            dst_ap="65.208.228.223:80", rule="1:1000001:1", action="allow")
    a = af.parse_line("snort3-json", ap)
    assert (a.time, a.gid, a.sid, a.rev, a.proto, a.sport, a.dport, a.action, a.msg) == (
        T_GET, 1, 1000001, 1, 6, 3372, 80, "allow", "")
    split = s3(seconds=1084443428, timestamp="05/13-10:17:08.222534", src_addr="145.254.160.237",
               src_port=3372, dst_addr="65.208.228.223", dst_port=80, gid=1, sid=1000001, rev=1,
               msg="LOCAL GET", **{"class": "Misc activity"}, priority=3, service="http")
    b = af.parse_line("snort3-json", split)          # seconds: no year needed
    assert (b.time, b.msg, b.classification, b.priority, b.app_proto, b.sport) == (
        T_GET, "LOCAL GET", "Misc activity", 3, "http", 3372)
    bare = af.parse_line("snort3-json", s3(timestamp="05/13-10:17:08.222534", src_addr="10.0.0.1",
                                           dst_addr="10.0.0.2", sid=7, **{"class": "none"}), year=2004)
    assert (bare.time, bare.gid, bare.rev, bare.sport, bare.proto, bare.classification) == (
        T_GET, 1, 0, None, None, None)


def test_snort3_json_ipv6_and_icmp_ap():
    a = af.parse_line("snort3-json", s3(seconds=1084443428, proto="TCP", src_ap="2001:db8::1:80",
                                        dst_ap="2001:db8::2:4000", rule="1:2:3"))
    assert (a.saddr, a.sport, a.daddr, a.dport) == ("2001:db8::1", 80, "2001:db8::2", 4000)
    icmp = af.parse_line("snort3-json", s3(seconds=1084443428, proto="ICMP", src_ap="fe80::1:0",
                                           dst_ap="fe80::2:0", rule="1:2:3"))
    assert (icmp.proto, icmp.saddr, icmp.sport, icmp.dport) == (58, "fe80::1", None, None)


@pytest.mark.parametrize("fields, reason", [
    ({"src_ap": "10.0.0.1:1", "dst_ap": "10.0.0.2:2", "rule": "1:2:3"}, "no time"),
    ({"seconds": 1, "dst_ap": "10.0.0.2:2", "rule": "1:2:3"}, "no src_addr"),
    ({"seconds": 1, "src_ap": "10.0.0.1:1", "dst_ap": "10.0.0.2:2"}, "no rule"),
    ({"seconds": 1, "src_ap": "10.0.0.1:1", "dst_ap": "10.0.0.2:2", "rule": "1:2"}, "rule"),
    ({"event_type": "alert", "seconds": 1, "src_ap": "10.0.0.1:1", "dst_ap": "10.0.0.2:2", "rule": "1:2:3"},
     "EVE"),
])
def test_snort3_json_needs_time_addresses_rule(fields, reason):
    with pytest.raises(AlertError, match=reason):
        af.parse_line("snort3-json", s3(**fields))


def test_snort3_csv_default_fields():
    # the snort3_demo test tests/framework/output/expected, Snort 3's own output
    line = "05/18-19:05:17.359719, 5, TCP, raw, 83, S2C, 10.9.8.7:80, 10.1.2.3:48620, 1:1000002:1, allow"
    a = af.parse_line("snort3-csv", line, year=2021, sid_map={(1, 1000002): "second rule works"})
    assert (a.time, a.proto, a.saddr, a.sport, a.daddr, a.dport) == (1621364717.359719, 6, "10.9.8.7", 80,
                                                                      "10.1.2.3", 48620)
    assert (a.gid, a.sid, a.rev, a.action, a.msg, a.format) == (1, 1000002, 1, "allow", "second rule works",
                                                                "snort3-csv")
    assert af.parse_line("snort3-csv", line, year=2021).msg == ""
    v6 = af.parse_line("snort3-csv", "21/05/18-19:05:17.359719, 9, ICMP, raw, 64, C2S, 2001:db8::1:0, "
                                     "2001:db8::2:0, 1:3:1, allow")
    assert (v6.time, v6.proto, v6.saddr, v6.sport, v6.daddr, v6.dport) == (1621364717.359719, 58, "2001:db8::1",
                                                                           None, "2001:db8::2", None)


def test_snort3_csv_too_few_fields():
    with pytest.raises(AlertError, match="fields"):
        af.parse_line("snort3-csv", "05/18-19:05:17.359719, 5, TCP, raw, 83")


# --- times without a year ---------------------------------------------------------------------------

FAST = '{date}-10:17:08.222534 [**] [1:2:3] "m" [**] [Priority: 3] {{TCP}} 10.0.0.1:1 -> 10.0.0.2:2'


def test_year_from_option_then_span_then_not_in_future():
    line = FAST.format(date="05/13")
    stats = af.ReadStats()
    assert af.parse_line("fast", line, year=2004, span=(0, 1), stats=stats).time == T_GET
    assert stats.years == {2004: "--year"}
    stats = af.ReadStats()
    assert af.parse_line("fast", line, span=DPKT_SPAN, stats=stats).time == T_GET
    assert stats.years == {2004: "archives' span"}
    stats = af.ReadStats()
    a = af.parse_line("fast", line, stats=stats)
    (year, how), = stats.years.items()
    assert how == "not in the future" and a.time <= time.time() + 86400 < a.time + 366 * 86400


def test_year_before_the_span():
    """31 Dec, and archives from 1 Jan on: the year before (within the day's slack)."""
    jan1 = 1704067200.0                        # 2024-01-01T00:00:00Z
    stats = af.ReadStats()
    a = af.parse_line("fast", FAST.format(date="12/31").replace("10:17", "23:59"), span=(jan1, jan1 + 3600),
                      stats=stats)
    assert a.time == jan1 - 60 + 8.222534 and stats.years == {2023: "archives' span"}


def test_span_that_does_not_fit_falls_back_to_not_in_the_future():
    stats = af.ReadStats()
    af.parse_line("fast", FAST.format(date="05/13"), span=(T_GET + 100 * 86400, T_GET + 101 * 86400), stats=stats)
    assert list(stats.years.values()) == ["not in the future"]


def test_feb_29():
    feb29 = 1709164800.0 + 10 * 3600 + 17 * 60 + 8.222534        # 2024-02-29T10:17:08.222534Z
    line = FAST.format(date="02/29")
    assert af.parse_line("fast", line, year=2024).time == feb29
    stats = af.ReadStats()
    assert af.parse_line("fast", line, span=(feb29 - 3600, feb29 + 3600), stats=stats).time == feb29
    assert stats.years == {2024: "archives' span"}
    stats = af.ReadStats()                      # the latest leap year not in the future
    t = af.parse_line("fast", line, stats=stats).time
    (year, how), = stats.years.items()
    assert year % 4 == 0 and how == "not in the future" and t <= time.time() + 86400
    with pytest.raises(AlertError, match="no such date"):
        af.parse_line("fast", line, year=2023)
    assert af.parse_line("fast", FAST.format(date="02/29/2024")).time == feb29   # Suricata's year
    assert af.parse_line("fast", FAST.format(date="24/02/29")).time == feb29     # Snort 3 -y


# --- bad lines --------------------------------------------------------------------------------------

BAD_LINES = [
    ("eve", "{not json", "not JSON"),
    ("eve", "[1, 2]", "not an object"),
    ("eve", '"alert"', "not an object"),
    ("eve", "12", "not an object"),
    ("eve", eve(src_port=70000), "src_port: 70000 out of range"),
    ("eve", eve(dest_port=-1), "dest_port: -1 out of range"),
    ("eve", eve(src_port=8.5), "src_port: not a whole number"),
    ("eve", eve(src_port=True), "src_port: not a whole number"),
    ("eve", eve(alert={"signature_id": -5}), "signature_id: -5 out of range"),
    ("eve", eve(alert={"signature_id": 1, "gid": 2**40}), "gid: .* out of range"),
    ("eve", eve(alert={"signature_id": 10**30}), "signature_id"),
    ("eve", eve(alert={"gid": 1}), "signature_id missing"),
    ("eve", eve(alert="x"), "alert: missing"),
    ("eve", eve(src_ip="10.0.0.256"), "not an IP address"),
    ("eve", eve(src_ip=None), "src_ip"),
    ("eve", eve(proto="FOO"), "unknown protocol"),
    ("eve", eve(proto=300), "unknown protocol"),
    ("eve", eve(timestamp="yesterday"), "not ISO 8601"),
    ("eve", eve(timestamp=None), "not ISO 8601"),
    ("eve", eve(timestamp="NaN"), "not ISO 8601"),
    ("eve", eve(timestamp="1969-12-31T23:59:59Z"), "year 1969 out of range"),
    ("eve", eve(timestamp="1970-01-01T00:30:00+0100"), "out of range"),
    ("eve", eve(timestamp="0001-01-01T00:00:00Z"), "out of range"),
    ("eve", eve(timestamp="10000-01-01T00:00:00Z"), "not ISO 8601"),
    ("eve", eve(timestamp="9999-12-31T23:59:00-0100"), "out of range"),
    ("eve", eve(timestamp="2004-02-30T00:00:00Z"), "no such date"),
    ("eve", eve(timestamp="2004-05-13T24:00:00Z"), "no such time"),
    ("eve", eve(timestamp="2004-05-13T23:00:61Z"), "no such second"),
    ("eve", eve(community_id=5), "community_id"),
    ("snort3-json", '{ "seconds" : NaN, "src_ap" : "1.2.3.4:1", "dst_ap" : "1.2.3.4:2", "rule" : "1:2:3" }',
     "not JSON"),
    ("snort3-json", '{ "seconds" : Infinity, "src_ap" : "1.2.3.4:1", "dst_ap" : "1.2.3.4:2", "rule" : "1:2:3" }',
     "not JSON"),
    ("snort3-json", s3(seconds=1e300, src_ap="1.2.3.4:1", dst_ap="1.2.3.4:2", rule="1:2:3"), "seconds"),
    ("snort3-json", s3(seconds=253402300800, src_ap="1.2.3.4:1", dst_ap="1.2.3.4:2", rule="1:2:3"), "seconds"),
    ("snort3-json", s3(seconds=1, src_ap="1.2.3.4:99999", dst_ap="1.2.3.4:2", rule="1:2:3"), "bad port"),
    ("snort3-json", s3(seconds=1, src_ap="1.2.3.4:1", dst_ap="1.2.3.4:2", rule="1:99999999999:3"), "rule"),
    ("snort3-json", s3(timestamp="13/45-10:17:08.222534", src_ap="1.2.3.4:1", dst_ap="1.2.3.4:2", rule="1:2:3"),
     "no such date"),
    ("snort3-csv", "05/18-19:05:17.359719, 5, TCP, raw, 83, S2C, 10.9.8.7:80, 10.1.2.3:48620, 1:x:1, allow",
     "rule"),
    ("snort3-csv", "yesterday, 5, TCP, raw, 83, S2C, 10.9.8.7:80, 10.1.2.3:48620, 1:2:1, allow", "timestamp"),
    ("fast", "hello world", "not an alert_fast line"),
    ("fast", FAST.format(date="05/13").replace("{TCP}", "TCP"), "not an alert_fast line"),
    ("fast", FAST.format(date="05/13").replace("[Priority: 3]", "[Priority: high]"), "Priority"),
    ("fast", FAST.format(date="05/13").replace("10.0.0.1:1", "10.0.0.1:65536"), "bad port"),
    ("fast", FAST.format(date="05/13").replace("10.0.0.1:1", "10.0.0.999:1"), "not an IP address"),
    ("fast", FAST.format(date="05/13").replace("[1:2:3]", "[1:2:99999999999]"), "not an alert_fast line"),
    ("fast", FAST.format(date="05/13/1969"), "year 1969 out of range"),
]


@pytest.mark.parametrize("fmt, line, reason", BAD_LINES)
def test_bad_lines(fmt, line, reason):
    with pytest.raises(AlertError, match=reason):
        af.parse_line(fmt, line, year=2004)


def test_bad_lines_are_counted_the_first_shown_and_reading_goes_on():
    lines = [eve(), "", "garbage here", eve(src_port=70000), eve(timestamp="2004-05-13T12:17:09+0200")]
    alerts, stats = read_all("\n".join(lines) + "\n", "eve")
    assert [a.time for a in alerts] == [T_GET, 1084443429.0]
    assert (stats.read, stats.skipped, stats.bad) == (2, 1, 2)
    assert stats.first_bad == (3, "not JSON (JSONDecodeError): garbage here")


def test_first_bad_keeps_120_characters_of_the_line():
    _, stats = read_all(("x" * 500 + "\n").encode(), "fast")
    assert stats.first_bad == (1, "not an alert_fast line: " + "x" * 120)


# --- detection and forcing ----------------------------------------------------------------------------

@pytest.mark.parametrize("head, fmt", [
    (eve().encode() + b"\n", "eve"),
    (b"\n# eve.json\n" + eve(event_type="flow").encode(), "eve"),
    (eve().encode()[:110], "eve"),             # a first line cut short after its event_type
    (s3(seconds=1, src_ap="1.2.3.4:1", dst_ap="1.2.3.4:2", rule="1:2:3").encode(), "snort3-json"),
    (FAST.format(date="05/13").encode(), "fast"),
    (b"05/18-19:05:17.359719, 5, TCP, raw, 83, S2C, 10.9.8.7:80, 10.1.2.3:48620, 1:1000002:1, allow\n", "snort3-csv"),
    (struct.pack(">II", 7, 52) + bytes(52), "unified2"),
    (struct.pack(">II", 2, 40) + bytes(40), "unified2"),
])
def test_detect(head, fmt):
    assert af.detect(head) == fmt


@pytest.mark.parametrize("head", [b"", b"\n\n# only comments\n", b"hello\n", b"\x89PNG\r\n\x1a\n" + bytes(50),
                                  b"a,b,c\n", struct.pack(">II", 7, 1 << 30)])
def test_detect_refuses(head):
    with pytest.raises(AlertError):
        af.detect(head)


def test_read_detects_and_format_forces():
    data = (FAST.format(date="05/13") + "\n").encode()
    assert read_all(data, year=2004)[0][0].format == "fast"
    alerts, stats = read_all(data, "eve")              # forced: every line is read as EVE
    assert (alerts, stats.bad) == ([], 1)
    with pytest.raises(AlertError, match="not a known alert format"):
        read_all(b"hello\n")
    with pytest.raises(AlertError, match="unknown format"):
        read_all(data, "snort2")
    assert read_all(b"") == ([], af.ReadStats())


def test_read_from_a_pipe_like_stream():
    """No seek, reads return little at a time: detection reads ahead and gives the bytes back."""
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data = data

        def readable(self):
            return True

        def readinto(self, buf):
            n = min(len(buf), 7, len(self.data))
            buf[:n], self.data = self.data[:n], self.data[n:]
            return n

    lines = [eve(), eve(event_type="dns", alert=None), eve()]
    stats = af.ReadStats()
    alerts = list(af.read(Trickle(("\n".join(lines) + "\n").encode()), stats=stats))
    assert [a.raw for a in alerts] == [lines[0], lines[2]] and stats.skipped == 1


def test_raw_is_the_line_without_its_newline_and_makes_the_id():
    alerts, _ = read_all((eve() + "\r\n" + eve()).encode())
    assert [a.raw for a in alerts] == [eve(), eve()]
    assert alerts[0].id == alerts[1].id == af.parse_line("eve", eve()).id
    assert alerts[0] == af.parse_line("eve", eve())   # built like Alert(...): equal, same hash
    assert hash(alerts[0]) == hash(Alert(**{k: v for k, v in vars(alerts[0]).items()}))


def test_parse_line_skips_blank_and_comments_and_refuses_binary():
    assert af.parse_line("fast", "   ") is None and af.parse_line("eve", "# x") is None
    with pytest.raises(AlertError, match="binary"):
        af.parse_line("unified2", "x")
    with pytest.raises(AlertError, match="unknown format"):
        af.parse_line("csv", "x")


# --- sid maps ----------------------------------------------------------------------------------------------

def test_sid_map_v1(tmp_path):
    path = tmp_path / "sid-msg.map"
    path.write_text("# sid-msg.map v1\n2000001 || ET POLICY one || url,example.com\n"
                    "2000002 || ET POLICY two\n\nbroken line\n")
    assert af.load_sid_map(path) == {(1, 2000001): "ET POLICY one", (1, 2000002): "ET POLICY two"}


def test_sid_map_v2(tmp_path):
    path = tmp_path / "sid-msg.map"
    path.write_text("#v2\n1 || 2000001 || 3 || policy-violation || 1 || ET POLICY one || url,example.com\n"
                    "3 || 15 || 1 || attempted-admin || 0 || SO rule || cve,2010-1\n")
    assert af.load_sid_map(path) == {(1, 2000001): "ET POLICY one", (3, 15): "SO rule"}
    path.write_text("1 || 2000001 || 3 || policy-violation || 1 || no header || url,example.com\n")
    assert af.load_sid_map(path) == {(1, 2000001): "no header"}


def test_sid_map_from_rules(tmp_path):
    path = tmp_path / "local.rules"
    path.write_text(
        'alert tcp any any -> any 80 (msg:"Quoted \\"word\\" and \\; (parens)"; content:"sid:9;"; sid:1; rev:2;)\n'
        '# alert tcp any any -> any any (msg:"disabled, still named"; sid:2;)\n'
        'alert http (msg:"over two lines";\n    gid:3; sid:3; )\n'
        '# a comment (with parens) but no rule\n')
    assert af.load_sid_map(path) == {(1, 1): 'Quoted "word" and ; (parens)', (1, 2): "disabled, still named",
                                     (3, 3): "over two lines"}
    fixture = af.load_sid_map(ALERTS / "local.rules")
    assert len(fixture) == 11 and fixture[(1, 1000003)] == "LOCAL HTTP request to an ad server"


def test_sid_map_gid_3_falls_back_to_gid_1():
    line = "05/18-19:05:17.359719, 5, TCP, raw, 83, S2C, 10.9.8.7:80, 10.1.2.3:48620, 3:77:1, allow"
    assert af.parse_line("snort3-csv", line, year=2021, sid_map={(1, 77): "shared"}).msg == "shared"


# --- unified2 ------------------------------------------------------------------------------------------------
# Snort 2 manual, "unified2": every record is a header (type, length: big-endian u32) and a body;
# events hold sensor id, event id, event second and microsecond, signature id, generator id,
# revision, classification id, priority, the addresses, sport/itype, dport/icode (u16), protocol,
# impact flag, impact, blocked (u8); v2 adds the MPLS label (u32), VLAN id and a pad (u16).
# Type 114 is Snort 3's (src/log/unified2.h).

def u2(rtype: int, body: bytes) -> bytes:
    return struct.pack(">II", rtype, len(body)) + body


def u2_event(rtype, sensor, event, sec, usec, sid, gid, rev, cls, prio, src, dst, sp, dp, proto, blocked=0):
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    body = struct.pack(f">9I{len(a)}s{len(b)}sHHBBBB", sensor, event, sec, usec, sid, gid, rev, cls, prio,
                       a, b, sp, dp, proto, 0, 0, blocked)
    if rtype in (104, 105):
        body += struct.pack(">IHH", 0, 10, 0)
    return u2(rtype, body)


def u2_packet(sensor, event, sec, data: bytes) -> bytes:
    return u2(2, struct.pack(">7I", sensor, event, sec, sec, 5, 1, len(data)) + data)


def u2_event3(sensor, event, sec, usec, gid, sid, rev, src, dst, sp, dp, proto, action):
    mapped = lambda a: ipaddress.ip_address(a).packed.rjust(16, b"\0") if ":" in a else (
        b"\0" * 10 + b"\xff\xff" + ipaddress.ip_address(a).packed)
    body = struct.pack(">12I16s16sIHHHHBBBB64s", sensor, event, sec, usec, gid, sid, rev, 2, 1, 0, 0, 0,
                       mapped(src), mapped(dst), 0, sp, dp, 0, 0, 0x44 if ":" not in src else 0x66, proto, 0,
                       action, b"http")
    return u2(114, body)


def test_unified2_round_trip():
    data = b"".join([
        u2_event(7, 1, 11, 1084443428, 222534, 1000001, 1, 1, 3, 3, "145.254.160.237", "65.208.228.223", 3372, 80, 6),
        u2_packet(1, 11, 1084443428, b"\0" * 60),
        u2_event(72, 1, 12, 1084443429, 5, 1000002, 1, 2, 3, 2, "2001:db8::1", "2001:db8::2", 4000, 53, 17),
        u2_event(104, 1, 13, 1084443430, 0, 1000003, 1, 1, 3, 1, "10.0.0.1", "10.0.0.2", 8, 0, 1, blocked=1),
        u2_event(105, 2, 14, 1084443431, 999999, 1000004, 1, 1, 3, 1, "fe80::1", "fe80::2", 128, 0, 58),
        u2_event3(3, 15, 1084443432, 7, 1, 1000005, 1, "192.0.2.1", "192.0.2.2", 1234, 443, 6, 1),
    ])
    assert af.detect(data[:4096]) == "unified2"
    alerts, stats = read_all(data, sid_map={(1, 1000001): "LOCAL GET"})
    assert (stats.read, stats.skipped, stats.bad) == (5, 1, 0)
    got = [(a.time, a.gid, a.sid, a.rev, a.priority, a.proto, a.saddr, a.sport, a.daddr, a.dport, a.action)
           for a in alerts]
    assert got == [
        (T_GET, 1, 1000001, 1, 3, 6, "145.254.160.237", 3372, "65.208.228.223", 80, None),
        (1084443429.000005, 1, 1000002, 2, 2, 17, "2001:db8::1", 4000, "2001:db8::2", 53, None),
        (1084443430.0, 1, 1000003, 1, 1, 1, "10.0.0.1", None, "10.0.0.2", None, "blocked"),
        (1084443431.999999, 1, 1000004, 1, 1, 58, "fe80::1", None, "fe80::2", None, None),
        (1084443432.000007, 1, 1000005, 1, 1, 6, "192.0.2.1", 1234, "192.0.2.2", 443, "drop"),
    ]
    assert alerts[0].msg == "LOCAL GET" and alerts[1].msg == "" and {a.format for a in alerts} == {"unified2"}
    assert alerts[0].raw == ("unified2 type=7 sensor=1 event=11 time=1084443428.222534 rule=1:1000001:1 "
                             "class=3 priority=3 proto=6 145.254.160.237 3372 -> 65.208.228.223 80")
    assert [a.id for a in read_all(data)[0]] == [a.id for a in alerts]


def test_unified2_bad_records():
    good = u2_event(7, 1, 11, 1084443428, 222534, 1000001, 1, 1, 3, 3, "10.0.0.1", "10.0.0.2", 1, 2, 6)
    short = u2(7, bytes(20))                                   # too short for an event
    odd = u2(9999, b"whatever")                                # unknown type: skipped by its length
    bad_usec = u2_event(7, 1, 12, 1084443428, 2_000_000, 1, 1, 1, 3, 3, "10.0.0.1", "10.0.0.2", 1, 2, 6)
    alerts, stats = read_all(short + good + odd + bad_usec + good + good[:30], "unified2")
    assert len(alerts) == 2 and (stats.read, stats.bad) == (2, 4)
    assert stats.first_bad[0] == 1 and stats.first_bad[1].startswith("record type 7:")
    _, stats = read_all(struct.pack(">II", 7, 1 << 31) + bytes(100), "unified2")
    assert stats.bad == 1 and "over" in stats.first_bad[1]


# --- hostile input ------------------------------------------------------------------------------------------

def test_ten_megabyte_lines_are_bad_and_reading_goes_on():
    data = b"{" + b"x" * (10 << 20) + b"\n" + eve().encode() + b"\n" + b"y" * (3 << 20)
    alerts, stats = read_all(data, "eve")
    assert len(alerts) == 1 and stats.bad == 2
    assert stats.first_bad == (1, f"line longer than {af.MAX_LINE} bytes: {{" + "x" * 119)
    with pytest.raises(AlertError, match="longer"):
        af.parse_line("fast", "x" * (af.MAX_LINE + 1))


def test_binary_garbage_and_invalid_utf8():
    garbage = bytes(range(256)) * 64 + b"\n\xff\xfe{\"a\n\x00\x00\x00\n"
    alerts, stats = read_all(garbage + eve().encode() + b"\n", "eve")
    assert len(alerts) == 1 and stats.bad >= 3
    for fmt in ("fast", "snort3-csv", "snort3-json"):
        _, stats = read_all(garbage, fmt)
        assert stats.read == 0 and stats.bad > 0
    _, stats = read_all(bytes(range(256)) * 64, "unified2")
    assert stats.read == 0 and stats.bad == 1
    # invalid UTF-8 in a message is replaced, the alert kept
    line = eve().replace("LOCAL GET", "LOCAL \udcff GET").encode("utf-8", "surrogateescape")
    (a,), _ = read_all(line + b"\n")
    assert a.msg == "LOCAL \ufffd GET" and a.raw.encode("utf-8")


def test_deeply_nested_json_is_a_bad_line():
    deep = "[" * 200_000 + "]" * 200_000
    for fmt in ("eve", "snort3-json"):
        with pytest.raises(AlertError, match="not JSON"):
            af.parse_line(fmt, deep)
        with pytest.raises(AlertError, match="not JSON"):
            af.parse_line(fmt, '{"a":' + "{\"a\":" * 100_000 + "1" + "}" * 100_001)
    assert af.detect(("{\"a\":" * 10_000).encode()) == "snort3-json"   # no RecursionError out of detect


def test_pathological_fast_lines_do_not_hang():
    start = time.monotonic()
    for line in ["05/13-10:17:08.222534 [**] [1:2:3] " + "[**] [Priority: 1] {TCP} " * 30_000 + "a" * 100_000,
                 "05/13-10:17:08.222534 [**] [1:2:3] " + "{" * 500_000,
                 "05/13-10:17:08.222534 [**] [1:2:3] m [**] " + "[Classification: " * 50_000 + "{TCP} a -> b"]:
        with pytest.raises(AlertError):
            af.parse_line("fast", line, year=2004)
    assert time.monotonic() - start < 5


# --- EVE straight to rows (what `flowtap alerts import` reads) ------------------------------------

def odd_eve_lines() -> list[bytes]:
    """EVE lines the row fast path must read as ``read`` does: well-formed, unusual and hostile."""
    bad_eve = [line for fmt, line, _ in BAD_LINES if fmt == "eve"]
    odd = [eve(), eve(src_port="3372", dest_port="80"), eve(flow_id="12"), eve(flow_id=2**63),
           eve(flow_id=2**63 - 1), eve(alert={"signature_id": "7"}), eve(alert={"signature_id": 7, "rev": None}),
           eve(alert={"signature_id": 7, "gid": True}), eve(alert={"signature_id": 4294967295, "severity": 2**32}),
           eve(alert={"signature_id": 7, "signature": 5}), eve(alert={"signature_id": 7, "category": ""}),
           eve(alert={"signature_id": 7, "action": ["x"]}), eve(app_proto=3), eve(community_id="x" * 65),
           eve(community_id="x" * 64), eve(proto=None), eve(proto="icmp", src_port=8, dest_port=0),
           eve(proto="ipv6-icmp", src_ip="2001:DB8::1", dest_ip="2001:db8:0:0::2"),
           eve(src_ip="[2001:db8::1]"), eve(src_ip=" 10.0.0.1 "), eve(src_ip="010.0.0.1"),
           eve(timestamp="2004-05-13T12:17:08.2225349+0200"), eve(timestamp="2004-05-13T12:17:08.2+0200"),
           eve(timestamp="2004-05-13T12:17:08.222534"), eve(timestamp="2004-05-13T12:17:08.222534Z"),
           eve(timestamp="2004-05-13 12:17:08.222534+02:00"), eve(timestamp="2004-05-13T12:17:60.222534+0200"),
           eve(timestamp="2004-05-13T12:17:08.22253４+0200"), eve(timestamp="２004-05-13T12:17:08.222534+0200"),
           eve(timestamp="2004-05-13T12:17:08.22253²+0200"),
           eve(timestamp="2004-05-13T12:17:08.222534+0200x"), eve(timestamp="2004-05-13T12:17:08.-22534+0200"),
           eve(timestamp="9999-12-31T23:59:59.999999+0000"), eve(timestamp=12),
           eve(alert={"signature_id": 7, "signature": "caf\u00e9 \u2603 \U0001f600"}),
           eve(event_type="dns", alert=None), eve(event_type="http"), eve(event_type=None),
           re.sub(r'"event_type": "alert"', '"event_type" :\t"alert"', eve()),
           '{"x": {"event_type": "flow"}, ' + eve()[1:],           # the first event_type is nested
           '{"x": "\\"event_type\\": \\"alert\\"", "event_type": "flow"}',
           '{"event_type": "alert", "event_type": "flow", "alert": {"signature_id": 1}}',
           '  ' + eve() + '  ', "[" + eve() + "]", eve() + " x", "", "# " + eve()]
    out = [x.encode() for x in bad_eve + odd + native_odd_eve_lines()]
    out.append(eve().replace("LOCAL GET", "LOCAL \udcff GET").encode("utf-8", "surrogateescape"))
    out.append(eve().replace("LOCAL GET", "LOCAL \udced\udca0\udc80 GET").encode("utf-8", "surrogateescape"))
    out.append(eve().encode()[:-5] + b"\xff" + eve().encode()[-5:])
    out.append(b'{"event_type":"alert",' + b'"a":' * 5000 + b"1" + b"}" * 5001)
    return out


def native_odd_eve_lines() -> list[str]:
    """Lines at the edges of what native/alertparse.c reads itself: JSON it must check as orjson
    does, fields at their limits, times at the edges of the calendar."""
    plain = eve()
    return [
        eve(alert={"signature_id": 7, "signature": 'say \\"hi\\"'}), eve(app_proto="a\u00e9b"),
        plain.replace('"src_ip"', '"src\\u005fip"'), plain.replace('"alert": {', '"alert": {"gid": 2, '),
        plain.replace('"flow_id"', '"src_ip": "10.0.0.9", "flow_id"'), plain[:-1] + ', "alert": 5}',
        plain[:-1] + ', "x": [1, -2, 3.5, 0.25e3, true, false, null, {"a": [[]]}, "\\ud800"]}',
        plain[:-1] + ', "x": [1, -0, 1.5, -2.5, {}, [], "\\n\\t\\/\\u0041"]}', plain[:-1] + ', "x": 01}',
        plain[:-1] + ', "x": 1.}', plain[:-1] + ', "x": [1,]}', plain[:-1] + ', "x": tru}',
        plain[:-1] + ', "x": 123456789012345678901234567890}', plain[:-1] + ', "x": 1e400}',
        plain[:-1] + ', "x": "\\x"}', plain[:-1] + ', "x": "\\u12g4"}', plain[:-1] + ', "x": "a\tb"}',
        plain[:-1] + ', "x": ' + "[" * 40 + "]" * 40 + "}", plain[:-1] + ', "x": ' + "[" * 20 + "]" * 20 + "}",
        plain[:-1] + ', "x": "\x7f"}', plain[:-1] + "}", plain[:-1] + ",}", plain + "\r", plain.replace(" ", "\t"),
        plain.replace(", ", ","), plain.replace(": ", " : "), "{}", '{"event_type": "alert"}',
        '{"event_type": "alert", "alert": {}}', eve(alert={"signature_id": 7}, src_ip=None),
        eve(flow_id=-1), eve(flow_id=2**64), eve(flow_id=10**19), eve(flow_id=1.0), eve(src_port=65536),
        eve(src_port=65535, dest_port=0), eve(alert={"signature_id": 2**32}), eve(alert={"signature_id": 0}),
        eve(alert={"signature_id": 7, "gid": None}), eve(alert={"signature_id": 7, "rev": 2**32 - 1}),
        eve(alert={"signature_id": 7, "severity": None, "signature": None, "category": None, "action": None}),
        eve(alert={"signature_id": 7, "signature": ""}), eve(alert={"signature_id": 1000001, "signature": ""}),
        eve(alert={"signature_id": 7, "signature": "m" * 300}), eve(app_proto=""), eve(app_proto=None),
        eve(community_id=""), eve(community_id=5), eve(src_ip="10.0.0.01"), eve(src_ip="1.2.3.4.5"),
        eve(src_ip="256.1.1.1"), eve(dest_ip="0.0.0.0"), eve(dest_ip="255.255.255.255"), eve(src_ip="1.2.3"),
        eve(src_ip=""), eve(src_ip=7), eve(proto="tcp"), eve(proto="Udp"), eve(proto=" TCP"), eve(proto="ip"),
        eve(proto="proto-47"), eve(proto="PROTO:047"), eve(proto="47"), eve(proto=47), eve(proto=256),
        eve(proto=0), eve(proto="IPV6-ICMP"), eve(proto="icmp"), eve(proto="sctp"), eve(proto="GRE"),
        eve(proto="x" * 30), eve(proto=True), eve(src_port=None, dest_port=None),
        eve(timestamp="2004-05-13T12:17:08.222534+02:00"), eve(timestamp="2004-05-13T12:17:08.222534-0130"),
        eve(timestamp="2004-05-13T12:17:08.222534+9999"), eve(timestamp="2004-05-13T12:17:08.222534+02"),
        eve(timestamp="2004-05-13T12:17:08.222534+0200 "), eve(timestamp="1970-01-01T00:00:00.000000+0000"),
        eve(timestamp="1970-01-01T00:00:00.000000+0001"), eve(timestamp="1969-12-31T23:59:59.999999-0100"),
        eve(timestamp="2004-02-29T00:00:00.000001Z"), eve(timestamp="2003-02-29T00:00:00.000001Z"),
        eve(timestamp="2000-02-29T23:59:59.999999Z"), eve(timestamp="2100-02-29T00:00:00.000000Z"),
        eve(timestamp="2004-04-31T00:00:00.000000Z"), eve(timestamp="2004-13-01T00:00:00.000000Z"),
        eve(timestamp="2004-00-01T00:00:00.000000Z"), eve(timestamp="2004-01-00T00:00:00.000000Z"),
        eve(timestamp="2004-05-13T24:00:00.000000Z"), eve(timestamp="2004-05-13T23:60:00.000000Z"),
        eve(timestamp="9999-12-31T23:58:59.999999Z"), eve(timestamp="9999-12-31T23:59:00.000000Z"),
        eve(timestamp="9999-12-31T23:59:59.999999-0100"), eve(timestamp="2004-05-13T12:17:08.999999+0200"),
        eve(timestamp="2004-05-13t12:17:08.222534+0200"), eve(timestamp="2004-05-13T12:17:08,222534+0200"),
        eve(timestamp="2004-05-13T12:17:08.222534z"), eve(timestamp=""), eve(timestamp="2004-05-13T12:17:08"),
        *(eve(src_ip=a, proto="icmp") for a in (
            "2001:db8:c::1f3", "::", "::1", "1::", "1:0:0:1:0:0:0:1", "1:0:0:0:1:0:0:1", "0:0:1:0:0:1:0:0",
            "2001:DB8::1", "2001:db8:0::1", "::ffff:102:304", "::ffff:1.2.3.4", "fe80::1%eth0",
            "1:2:3:4:5:6:7::", "1:0:2:0:3:0:4:0", "abcd::12345", "1::2::3", ":1::", "1:2:3:4:5:6:7:8:9")),
        eve(src_ip="10.0.0.1", dest_ip="2001:db8::1", proto="icmp"), eve(src_ip="2001:db8::1", dest_ip="10.0.0.1"),
    ]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("sid_map", [None, {(1, 1000001): "from the map", (1, 7): "seven"}])
def test_read_rows_are_the_rows_of_read_line_by_line_and_together(sid_map, native):
    """The EVE fast paths change nothing: for each odd line alone, and all of them in one stream
    (with CR LF, and forced or detected), the rows and every count equal ``row_of`` of ``read``,
    read in C (``native``) or in Python."""
    from appliance.alert_types import row_of
    if native:
        need_native()
    lines = odd_eve_lines()
    streams = [line + b"\n" for line in lines]
    streams.append(b"\n".join(lines) + b"\n")
    streams.append(b"\r\n".join(lines))
    for data in streams:
        for fmt in ("eve", None):
            want_stats, got_stats = af.ReadStats(), af.ReadStats()
            try:
                want = [row_of(a) for a in af.read(io.BytesIO(data), fmt, sid_map=sid_map, stats=want_stats)]
            except AlertError as e:                        # detection refused the first line
                with pytest.raises(AlertError, match=re.escape(str(e))):
                    list(af.read_rows(io.BytesIO(data), fmt, sid_map=sid_map, stats=got_stats, native=native))
                continue
            got = list(af.read_rows(io.BytesIO(data), fmt, sid_map=sid_map, stats=got_stats, native=native))
            assert got == want and got_stats == want_stats, data[:200]


def test_read_rows_takes_the_fast_path_for_plain_alerts_only():
    """A plain alert line becomes its row without an Alert; an odd one is left to ``_eve``."""
    from appliance.alert_types import row_of
    line = eve().encode()
    assert af._eve_row(line, None) == row_of(af.parse_line("eve", eve()))
    for odd in (eve(src_port="3372"), eve(timestamp="2004-05-13T12:17:08+0200x"), eve(event_type="dns")):
        assert af._eve_row(odd.encode(), None) is None


def test_read_rows_of_other_formats_and_of_nothing():
    from appliance.alert_types import row_of
    data = (FAST.format(date="05/13") + "\nhello\n").encode()
    stats = af.ReadStats()
    assert list(af.read_rows(io.BytesIO(data), year=2004, stats=stats)) == [
        row_of(a) for a in read_all(data, year=2004)[0]]
    assert (stats.read, stats.bad) == (1, 1)
    assert list(af.read_rows(io.BytesIO(b""))) == []
    with pytest.raises(AlertError, match="unknown format"):
        list(af.read_rows(io.BytesIO(data), "snort2"))


def test_row_id_is_the_alert_id_as_a_signed_rowid():
    from appliance.alert_types import alert_id, row_id
    for fmt, raw in (("eve", eve()), ("fast", "x \udcff \u00e9"), ("unified2", "")):
        want = int(alert_id(fmt, raw), 16)
        assert row_id(fmt.encode(), raw.encode("utf-8", "surrogatepass")) == (
            want - (1 << 64) if want >= 1 << 63 else want)


# --- EVE lines to rows in C (native/alertparse.c) -------------------------------------------------

def need_native():
    """Fail, never skip: `make build` builds the parser (setup.py's cffi_modules)."""
    if af._alertparse is None:
        pytest.fail("appliance._alertparse is not built: make build")


def native_items(data: bytes) -> list:
    """What alertparse.c answers for ``data``: rows, counts of skipped lines, lines it leaves."""
    ffi, lib = af._alertparse.ffi, af._alertparse.lib
    out, out_len = ffi.new("unsigned char[]", len(data) + 4096), ffi.new("size_t *")
    assert lib.alertparse_eve(data, len(data), 0, af.MAX_LINE, out, len(out), out_len) == len(data)
    return af._NativeRows(io.BytesIO(ffi.buffer(out, out_len[0]))).load()


def rows_both_ways(data: bytes, **kw) -> tuple:
    """read_rows of ``data`` in C and in Python: (rows, stats) each."""
    out = []
    for native in (True, False):
        stats = af.ReadStats()
        out.append((list(af.read_rows(io.BytesIO(data), "eve", stats=stats, native=native, **kw)), stats))
    return out[0], out[1]


def test_native_reads_plain_alerts_itself_and_leaves_the_rest():
    """A plain alert line comes back as its row, a run of other events as one count, anything
    else as the line's own bytes (for Python): the C path really is taken."""
    from appliance.alert_types import row_of
    need_native()
    line = eve().encode()
    flow = b'{"timestamp": "2004-05-13T12:17:08.222534+0200", "event_type": "flow", "x": {"y": 1}}'
    odd = eve(src_port="3372").encode()
    items = native_items(line + b"\n" + flow + b"\n\n" + flow + b"\r\n" + odd + b"\n" + line)
    want = row_of(af.parse_line("eve", eve()))
    assert items == [want, 3, odd + b"\n", want]
    assert native_items(b"") == [] and native_items(b"\n\n") == [2]


def test_native_rows_across_chunks_and_over_long_lines():
    """Lines across the 1 MiB reads, a line of exactly MAX_LINE bytes and one byte more (bad, read
    past: with and without its newline at the end of a read), a last line without newline: C and
    Python give the same rows and counts."""
    need_native()
    line = eve().encode() + b"\n"
    fill = line * (af.CHUNK // len(line) - 3)
    longest = eve(app_proto="y" * (af.MAX_LINE - len(eve(app_proto="")))).encode()   # a plain alert
    assert len(longest) == af.MAX_LINE
    over = longest.replace(b'"yy', b'"yyy')
    for data in (fill + longest + b"\n" + line + over + b"\n" + line * 3 + eve().encode(),
                 fill + over + b"\n" + over + b"\r\n" + line, fill + line * 2 + over,
                 fill + b"x" * (3 * af.MAX_LINE) + b"\n" + line, line + b"x" * (af.CHUNK * 3) + line):
        (got, got_stats), (want, want_stats) = rows_both_ways(data)
        assert got == want and got_stats == want_stats
        assert want_stats.read >= 1


FUZZ_VALUES = [None, "", "x", "10.0.0.01", "2001:db8::1", "2001:db8:0:0:1::1", "::ffff:1.2.3.4", "TCP", "icmp", "proto-47", 0, -1, 1.5, 47, 65536,
               2**32, 2**63, True, [], {}, {"signature_id": 5}, "2004-05-13T12:17:08.222534Z",
               "2004-02-30T12:17:08.222534+0000", "caf\u00e9", 'q"q', "a\\b", "x" * 70]


def mutate_value(rng, line: bytes) -> bytes:
    """A real line with one field (top level or in ``alert``) set to an odd value, or dropped."""
    try:
        obj = json.loads(line)
    except ValueError:
        return line
    if not isinstance(obj, dict):
        return line
    inner = obj.get("alert") if isinstance(obj.get("alert"), dict) and rng.random() < 0.5 else obj
    key = rng.choice(sorted(inner) or ["x"])
    value = rng.choice(FUZZ_VALUES)
    if value is None and rng.random() < 0.5:
        inner.pop(key, None)
    else:
        inner[key] = value
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5,
                      separators=rng.choice([(", ", ": "), (",", ":"), (" ,", " : ")])).encode("utf-8", "surrogatepass")


def mutate(rng, line: bytes) -> bytes:
    """A real line changed in one to three places: a field's value (half the time, the line then
    still JSON), bytes replaced, inserted, deleted or repeated."""
    if rng.random() < 0.5:
        return mutate_value(rng, line)
    alphabet = b'"{}[]:,.\\ -+0123456789eEaZTnul/\r\t\x00\x7f\xc3\xa9\xff'
    data = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        what = rng.randrange(4)
        if what == 0 and at < len(data):
            data[at] = rng.choice(alphabet)
        elif what == 1:
            data[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
        elif what == 2:
            del data[at:at + rng.randint(1, 8)]
        else:
            data[at:at] = data[at:at + rng.randint(1, 40)]
    return bytes(data).replace(b"\n", b" ")


def test_native_rows_equal_pythons_for_ten_thousand_mutated_lines():
    """Fuzz: 10,000 random mutations of real EVE lines (the fixtures', the benchmark's kind, the
    odd ones) read in C and in Python give the same rows and counts; a difference names its line."""
    import random
    need_native()
    rng = random.Random(2026)
    seeds = [x for x in (ALERTS / "dpkt-http.eve.json").read_bytes().splitlines() if x]
    seeds += [x for x in (ALERTS / "tcpreplay-test.eve.json").read_bytes().splitlines() if x]
    seeds += [eve().encode(), eve(proto="UDP", community_id=None, app_proto=None).replace(", ", ",").encode()]
    seeds += [x for x in odd_eve_lines() if len(x) < 2000]
    lines = [mutate(rng, rng.choice(seeds)) for _ in range(10_000)]
    sid_map = {(1, 1000001): "from the map"}
    (got, got_stats), (want, want_stats) = rows_both_ways(b"\n".join(lines) + b"\n", sid_map=sid_map)
    if got != want or got_stats != want_stats:
        for line in lines:
            assert rows_both_ways(line + b"\n", sid_map=sid_map)[0] == rows_both_ways(
                line + b"\n", sid_map=sid_map)[1], line
    assert got == want and got_stats == want_stats
    assert want_stats.read > 500 and want_stats.bad > 1000 and want_stats.skipped > 500   # every kind made
    data = b"\n".join(lines) + b"\n"
    assert sum(type(x) is tuple for x in native_items(data)) > 300           # many rows made in C


def test_native_ipv6_text_is_pythons():
    """Random IPv6 addresses (zero groups likely): in the text ipaddress gives them, C makes the
    row itself (but IPv4-mapped ones); written any other way, Python does; the rows are the same."""
    import ipaddress
    import random
    need_native()
    rng = random.Random(6)
    lines = []
    for _ in range(2000):
        address = ipaddress.IPv6Address(bytes(
            b for _ in range(8) for b in (rng.randrange(3) and (0, 0) or rng.randbytes(2))))
        for text in (str(address), address.exploded, str(address).upper()):
            lines.append(eve(src_ip=text, dest_ip=str(address)).encode())
    data = b"\n".join(lines) + b"\n"
    (got, got_stats), (want, want_stats) = rows_both_ways(data)
    assert got == want and got_stats == want_stats and want_stats.read == len(lines)
    made = [x for x in native_items(data) if type(x) is tuple]
    assert 1900 < len(made) < len(lines) and {x[9] for x in made} == {x[11] for x in made}


def test_native_read_holds_a_chunk_and_a_line_at_most():
    """The bound on what the C path holds: a read of CHUNK bytes and the rest of its last line
    (at most MAX_LINE + 1 of it), with its pickle and the line left to Python, whatever the lines'
    length: a 24 MiB line is read past."""
    import tracemalloc
    need_native()
    line = eve().encode() + b"\n"
    stream = io.BytesIO(line * 5000 + b"{" * (24 << 20) + b"\n" + line * 5000)
    tracemalloc.start()
    try:
        stats = af.ReadStats()
        n = sum(1 for _ in af.read_rows(stream, "eve", stats=stats, native=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 10_000 and stats.bad == 1 and stats.first_bad[0] == 5001
    assert peak < 4 * (af.CHUNK + af.MAX_LINE), peak
