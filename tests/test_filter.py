"""The Argus filter language: parser, errors with positions, and the Python and SQL forms agreeing."""

from __future__ import annotations

import datetime
import sqlite3

import pytest

from appliance import fields
from appliance.filter import (And, Compare, Const, FilterError, HasFlag, InNet, Not, OneOf, Or,
                              compile_predicate, compile_sql, in_net, parse, parse_time_range,
                              register_sql_functions)
from conftest import build_record

TCP = Compare("proto", "eq", 6)
UDP = Compare("proto", "eq", 17)
PORT_PROTOS = OneOf("proto", (6, 17, 132))


def port(n):
    return And(PORT_PROTOS, Or(Compare("sport", "eq", n), Compare("dport", "eq", n)))


def host(a):
    return Or(Compare("saddr", "eq", a), Compare("daddr", "eq", a))


# --- the parser -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, ast", [
    ("tcp", TCP),
    ("udp", UDP),
    ("proto 47", Compare("proto", "eq", 47)),
    ("proto gre", Compare("proto", "eq", 47)),
    ("arp", Compare("proto", "eq", 0x0806)),
    ("host 10.0.0.1", host("10.0.0.1")),
    ("10.0.0.1", host("10.0.0.1")),
    ("host 2001:DB8:0:0::1", host("2001:db8::1")),
    ("src host 10.0.0.1", Compare("saddr", "eq", "10.0.0.1")),
    ("dst 10.0.0.1", Compare("daddr", "eq", "10.0.0.1")),
    ("src and dst host 10.0.0.1", And(Compare("saddr", "eq", "10.0.0.1"),
                                      Compare("daddr", "eq", "10.0.0.1"))),
    ("src or dst host 10.0.0.1", host("10.0.0.1")),
    ("port 80", port(80)),
    ("port http", port(80)),
    ("dst port 53", And(PORT_PROTOS, Compare("dport", "eq", 53))),
    ("tcp dst port 80", And(TCP, Compare("dport", "eq", 80))),
    ("port 53-215", And(PORT_PROTOS, Or(And(Compare("sport", "ge", 53), Compare("sport", "le", 215)),
                                        And(Compare("dport", "ge", 53), Compare("dport", "le", 215))))),
    ("net 10.0.0.0/8", Or(InNet("saddr", "10.0.0.0/8"), InNet("daddr", "10.0.0.0/8"))),
    ("src net 192.168", InNet("saddr", "192.168.0.0/16")),
    ("src net 10.1.2", InNet("saddr", "10.1.2.0/24")),
    ("dst net 10.0.0.0 mask 255.255.0.0", InNet("daddr", "10.0.0.0/16")),
    ("net 2001:db8::/32", Or(InNet("saddr", "2001:db8::/32"), InNet("daddr", "2001:db8::/32"))),
    ("pkts gt 10", Compare("pkts", "gt", 10)),
    ("pkts > 10", Compare("pkts", "gt", 10)),
    ("bytes gte 1000", Compare("bytes", "ge", 1000)),
    ("bytes >= 1000", Compare("bytes", "ge", 1000)),
    ("src bytes lt 5", Compare("sbytes", "lt", 5)),
    ("dst appbytes le 5", Compare("dappbytes", "le", 5)),
    ("appbytes = 0", Compare("appbytes", "eq", 0)),
    ("spkts ne 3", Compare("spkts", "ne", 3)),
    ("dbytes lte 0x10", Compare("dbytes", "le", 16)),
    ("ttl 64", Or(Compare("sttl", "eq", 64), Compare("dttl", "eq", 64))),
    ("src ttl lt 10", Compare("sttl", "lt", 10)),
    ("vid 10", Or(Compare("svlan", "eq", 10), Compare("dvlan", "eq", 10))),
    ("dst vid eq 20", Compare("dvlan", "eq", 20)),
    ("tos 0", Or(Compare("stos", "eq", 0), Compare("dtos", "eq", 0))),
    ("mid 100", Or(Compare("smpls", "eq", 100), Compare("dmpls", "eq", 100))),
    ("dur gt 1.5", Compare("dur", "gt", 1.5)),
    ("synack gt 0.1", Compare("synack", "gt", 0.1)),
    ("svid 10", Compare("svlan", "eq", 10)),
    ("syn", Or(HasFlag("sflags", "S"), HasFlag("dflags", "S"))),
    ("src syn", HasFlag("sflags", "S")),
    ("synack", And(HasFlag("dflags", "S"), HasFlag("dflags", "A"))),
    ("fin", Or(HasFlag("sflags", "F"), HasFlag("dflags", "F"))),
    ("reset", Or(HasFlag("sflags", "R"), HasFlag("dflags", "R"))),
    ("dst rst", HasFlag("dflags", "R")),
    ("retrans", Or(Compare("sretrans", "gt", 0), Compare("dretrans", "gt", 0))),
    ("src retrans", Compare("sretrans", "gt", 0)),
    ("est", OneOf("state", ("CON", "EST"))),
    ("con", OneOf("state", ("CON", "EST"))),
    ("req", Compare("state", "eq", "REQ")),
    ("int", Compare("state", "eq", "INT")),
    ("timeout", Or(Compare("cause", "eq", "Timeout"), Compare("state", "eq", "TIM"))),
    ("state fin", Compare("state", "eq", "FIN")),
    ("cause timeout", Compare("cause", "eq", "Timeout")),
    ("srcid sensor1", Compare("srcid", "eq", "sensor1")),
    ("man", Const(False)),
    ("not man", Not(Const(False))),
    ("ether host 00:11:22:33:44:55", Or(Compare("smac", "eq", "00:11:22:33:44:55"),
                                        Compare("dmac", "eq", "00:11:22:33:44:55"))),
    ("ether src 0:1:2:3:4:5", Compare("smac", "eq", "00:01:02:03:04:05")),
    ("", None),
])
def test_primitives(text, ast):
    assert parse(text) == ast


def test_and_or_have_equal_precedence_left_to_right_like_argus():
    # ra -b shows Argus compiles "tcp or udp and port 443" as "(tcp or udp) and port 443".
    assert parse("tcp or udp and port 443") == And(Or(TCP, UDP), port(443))
    assert parse("port 443 and tcp or udp") == Or(And(port(443), TCP), UDP)


def test_not_binds_tightest_and_parentheses_group():
    assert parse("not tcp and udp") == And(Not(TCP), UDP)
    assert parse("! tcp && udp") == And(Not(TCP), UDP)
    assert parse("!(tcp || udp)") == Not(Or(TCP, UDP))
    assert parse("tcp or (udp and port 53)") == Or(TCP, And(UDP, port(53)))
    assert parse("not not tcp") == Not(Not(TCP))


def test_bare_ids_repeat_the_last_qualifier():
    assert parse("port 80 or 443") == Or(port(80), port(443))
    assert parse("not host 10.0.0.1 and 10.0.0.2") == And(Not(host("10.0.0.1")), host("10.0.0.2"))
    assert parse("tcp dst port 80 or 8080") == Or(And(TCP, Compare("dport", "eq", 80)),
                                                  And(TCP, Compare("dport", "eq", 8080)))


def test_argv_words_are_joined():
    assert parse(["tcp", "and", "port", "80"]) == And(TCP, port(80))


@pytest.mark.parametrize("text, column, message", [
    ("port x", 6, "expected a port number, got 'x'"),
    ("tcp and port x", 14, "expected a port number, got 'x'"),
    ("host", 5, "expected an address, got end of filter"),
    ("host 300.1.1.1", 6, "expected an address, got '300.1.1.1'"),
    ("foo", 1, "expected an address, got 'foo'"),
    ("tcp udp", 5, "expected 'and' or 'or', got 'udp'"),
    ("(tcp", 5, "expected ')', got end of filter"),
    ("tcp)", 4, "unbalanced ')'"),
    ("tcp and", 8, "expected a primitive, got end of filter"),
    ("tcp and )", 9, "expected a primitive, got ')'"),
    ("pkts gt x", 9, "expected a number, got 'x'"),
    ("bytes gt", 9, "expected a number, got end of filter"),
    ("src est", 1, "'est' takes no src/dst qualifier"),
    ("src dur gt 1", 1, "'dur' takes no src/dst qualifier"),
    ("net 10.0.0.0/40", 5, "expected a network such as 10.0.0.0/8, got '10.0.0.0/40'"),
    ("port 70000", 6, "port out of range: '70000'"),
    ("port 90-80", 6, "bad port range '90-80'"),
    ("tcp & udp", 5, "unexpected character '&'"),
    ("proto banana", 7, "expected a protocol name or number, got 'banana'"),
    ("ether host 1:2:3", 12, "expected a MAC address, got '1:2:3'"),
])
def test_errors_name_the_column(text, column, message):
    with pytest.raises(FilterError) as info:
        parse(text)
    assert info.value.position == column
    assert info.value.message == message
    assert str(info.value) == f"filter error at column {column}: {message}"
    assert "\n" not in str(info.value)


# --- Python and SQL agree ---------------------------------------------------------------------

RECORDS = [
    build_record(seq=1),
    build_record(seq=2, proto=17, saddr="10.0.0.2", sport=5353, daddr="10.0.0.53", dport=53,
                 dir="<->", state="CON", sflags="", dflags="", sttl=64, dttl=63,
                 conn_state=None, history=None, synack=0.0, ackdat=0.0, tcprtt=0.0),
    build_record(seq=3, proto=1, saddr="10.0.0.3", sport=8, daddr="198.18.0.3", dport=0x1234,
                 dir="<->", state="ECO", sflags="", dflags="", sappbytes=64, dappbytes=64),
    build_record(seq=4, proto=0x0806, saddr="10.0.0.1", sport=None, daddr="10.0.0.254",
                 dport=None, dir="who", state="INT", spkts=1, dpkts=0, sbytes=60, dbytes=0,
                 sappbytes=0, dappbytes=0, stos=None, dtos=None, sttl=None, dttl=None,
                 sflags="", dflags="", community_id=None, conn_state=None, history=None),
    build_record(seq=5, saddr="2001:db8::1", daddr="2001:db8::2", dport=443, state="RST",
                 sflags="S", dflags="RA", dpkts=1, dttl=None, cause="Stop"),
    build_record(seq=6, proto=0, saddr="01:80:c2:00:00:00", daddr="fe:54:00:d8:46:21",
                 sport=66, dport=66, state="INT", dir="->", stos=None, dtos=None, sttl=None,
                 dttl=None, sflags="", dflags="", community_id=None),
    build_record(seq=7, proto=17, sport=44000, dport=5353, svlan=10, dvlan=None, dpkts=0,
                 dbytes=0, dappbytes=0, state="INT", sflags="", dflags="", dttl=None,
                 flgs=" *       "),
    build_record(seq=8, state="REQ", sflags="S", dflags="", dpkts=0, dbytes=0, dappbytes=0,
                 dttl=None, dtos=None, saddr="192.168.1.5", sport=51000),
    build_record(seq=9, sretrans=2, flgs=" e    s  ", stime=1700000100.0, ltime=1700000200.0),
    build_record(seq=10, proto=17, cause="Timeout", state="INT", dport=123, sflags="",
                 dflags=""),
    build_record(seq=11, sflags="SAEC", dflags="SA", state="CON", sttl=1),
    build_record(seq=12, proto=17, flgs=" e  F    ", sport=None, dport=None, sflags="",
                 dflags=""),
    build_record(seq=13, proto=58, saddr="fe80::1", daddr="ff02::1", sport=135, dport=0,
                 state="NNS", sflags="", dflags=""),
    build_record(seq=14, proto=47, sport=None, dport=None, state="CON", sflags="", dflags=""),
    build_record(seq=15, smpls=100, stos=184, dur=0.25, srcid="sensor2", svlan=20, dvlan=20),
]

FILTERS = [
    "tcp", "udp", "icmp", "icmp6", "ipv6-icmp", "arp", "ip", "ipv4", "ipv6", "ip6", "gre",
    "proto 0", "ip proto 17", "host 10.0.0.1", "src host 10.0.0.1", "dst host 198.18.0.1",
    "host 2001:db8::1", "net 10.0.0.0/8", "src net 10", "dst net 198.18.0.0/15",
    "net 2001:db8::/32", "not net 10.0.0.0/8", "port 53", "not port 53", "src port 40000",
    "dst port 80 or 443", "port 1-1024", "port domain", "udp port 5353", "pkts gt 5",
    "bytes gte 3600", "src bytes lt 600", "appbytes eq 128", "dst pkts = 0", "ttl 64",
    "src ttl lt 10", "not ttl 64", "dst ttl gt 0", "tos 184", "vid 10", "not vid 10",
    "dst vid 20", "mid 100", "dur gt 1", "dur lt 1", "syn", "src syn", "synack",
    "syn and not synack", "fin", "reset", "rst", "dst reset", "ack", "push", "urg", "ecn",
    "retrans", "src retrans", "dst retrans", "est", "con", "req", "int", "timeout", "frag",
    "man", "not man", "state RST", "cause stop", "srcid sensor2", "seq gt 10",
    "ether host 02:00:00:00:00:01", "ether dst 02:00:00:00:00:02",
    "tcp or udp and port 53", "(tcp or udp) and not port 53", "!(tcp || udp) && !arp",
    "tcp and (syn or fin) and net 10.0.0.0/8", "not (src ttl 64 or dst ttl 56)",
    "ipv4 and not tcp and not udp", "smaxsz gt 100", "sminsz lt 60", "tcprtt gt 0.005",
]


@pytest.fixture
def db():
    conn = sqlite3.connect(":memory:")
    register_sql_functions(conn)
    cols = ", ".join(fields.RECORD_KEYS)
    conn.execute(f"CREATE TABLE flows ({cols})")
    marks = ", ".join("?" * len(fields.RECORD_KEYS))
    conn.executemany(f"INSERT INTO flows VALUES ({marks})",
                     [tuple(r[k] for k in fields.RECORD_KEYS) for r in RECORDS])
    yield conn
    conn.close()


def matches_py(text):
    keep = compile_predicate(parse(text))
    return {r["seq"] for r in RECORDS if keep(r)}


def matches_sql(db, text):
    where, params = compile_sql(parse(text))
    return {row[0] for row in db.execute(f"SELECT seq FROM flows WHERE {where}", params)}


@pytest.mark.parametrize("text", FILTERS)
def test_python_and_sql_agree(db, text):
    assert matches_py(text) == matches_sql(db, text)


@pytest.mark.parametrize("text, seqs", [
    ("tcp", {1, 5, 8, 9, 11, 15}),
    ("arp", {4}),
    ("ip6", {5, 13}),
    ("ipv4 and not tcp and not udp", {3, 14}),   # ARP and LLC are not IP
    ("port 53", {2}),
    ("icmp and port 8", set()),                   # ICMP type/code are not ports
    ("net 10.0.0.0/8 and udp", {2, 7, 10, 12}),
    ("not ttl 64", {4, 6, 11}),
    ("vid 10", {7}),
    ("not vid 10", set(range(1, 16)) - {7}),
    ("synack", {1, 9, 11, 15}),
    ("syn and not synack", {5, 8}),
    ("reset", {5}),
    ("retrans", {9}),
    ("req", {8}),
    ("timeout", {10}),
    ("frag", {12}),
    ("ecn", {11}),
    ("man", set()),
    ("not man", set(range(1, 16))),
    ("tcp or udp and port 53", {2}),
    ("srcid sensor2 and mid 100", {15}),
])
def test_meanings(text, seqs):
    assert matches_py(text) == seqs


def test_missing_values_are_false_and_their_negation_true(db):
    missing = {r["seq"] for r in RECORDS if r["dttl"] is None}
    assert matches_py("dst ttl gt 0") & missing == set()
    assert missing <= matches_py("not dst ttl gt 0")
    assert matches_sql(db, "not dst ttl gt 0") == matches_py("not dst ttl gt 0")


def test_sql_names_only_whitelisted_columns_and_binds_values():
    where, params = compile_sql(parse("host 10.0.0.1 and port 80"))
    assert "10.0.0.1" not in where and params.count("10.0.0.1") == 2
    with pytest.raises(ValueError):
        compile_sql(Compare("flows; DROP TABLE flows", "eq", 1))
    assert compile_sql(None) == ("1", [])
    assert compile_predicate(None)({}) is True


def test_in_net_helper():
    assert in_net("10.1.2.3", "10.0.0.0/8")
    assert not in_net("11.1.2.3", "10.0.0.0/8")
    assert not in_net("2001:db8::1", "10.0.0.0/8")
    assert in_net("2001:db8::1", "2001:db8::/32")
    assert not in_net("00:11:22:33:44:55", "10.0.0.0/8")
    assert not in_net(None, "10.0.0.0/8")


# --- -t time ranges ---------------------------------------------------------------------------

def epoch(*args):
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc).timestamp()


NOW = epoch(2024, 1, 31, 12, 30, 0)


def bounds(text):
    """(lo, hi) of an intersect range: And(stime < hi, ltime >= lo)."""
    node = parse_time_range(text, now=NOW)
    assert isinstance(node, And)
    return node.right.value, node.left.value


@pytest.mark.parametrize("text, lo, hi", [
    ("2024/01/01.10:00:00-2024/01/01.11:00:00", epoch(2024, 1, 1, 10), epoch(2024, 1, 1, 11)),
    ("2024/01/01", epoch(2024, 1, 1), epoch(2024, 1, 2)),
    ("2024/01", epoch(2024, 1, 1), epoch(2024, 2, 1)),
    ("2024", epoch(2024, 1, 1), epoch(2025, 1, 1)),
    ("2011/08-2011/10", epoch(2011, 8, 1), epoch(2011, 11, 1)),
    ("2024/01/01.10", epoch(2024, 1, 1, 10), epoch(2024, 1, 1, 11)),
    ("2024/01/01.10:15", epoch(2024, 1, 1, 10, 15), epoch(2024, 1, 1, 10, 16)),
    ("14", epoch(2024, 1, 31, 14), epoch(2024, 1, 31, 15)),
    ("15-23", epoch(2024, 1, 31, 15), epoch(2024, 1, 31, 23)),
    ("23.11:10-14", epoch(2024, 1, 23, 11, 10), epoch(2024, 1, 23, 14)),
    ("1700000000-1700003600", 1700000000, 1700003600),
    ("1700000000+90s", 1700000000, 1700000090),
    ("2024/01/01.10:00:00+1h30m", epoch(2024, 1, 1, 10), epoch(2024, 1, 1, 11, 30)),
    ("-10m", NOW - 600, NOW),
    ("-2h5m+5m", NOW - 7500, NOW - 7200),
    ("-1d", NOW - 86400, NOW),
])
def test_time_ranges(utc, text, lo, hi):
    assert bounds(text) == (lo, hi)


def test_time_range_modes(utc, make_record):
    inside = make_record(stime=1700000010.0, ltime=1700000020.0)
    spanning = make_record(stime=1699999990.0, ltime=1700000200.0)
    before = make_record(stime=1699999000.0, ltime=1699999100.0)
    recs = [inside, spanning, before]

    def sel(text):
        keep = compile_predicate(parse_time_range(text, now=NOW))
        return [recs.index(r) for r in recs if keep(r)]
    assert sel("1700000000-1700000100") == [0, 1]
    assert sel("c1700000000-1700000100") == [0]
    assert sel("n1700000000-1700000100") == [1]
    assert sel("x1700000000-1700000100") == [2]


@pytest.mark.parametrize("text, column", [
    ("bogus", 1), ("2024/13/01", 1), ("2024/01/01-nonsense", 12), ("-10q", 2),
    ("2024/01/02-2024/01/01", 1),
])
def test_bad_time_ranges(utc, text, column):
    with pytest.raises(FilterError) as info:
        parse_time_range(text, now=NOW)
    assert info.value.position == column
