"""racluster merging: keys, masks, direction correction, aggregation rules, output order."""

from __future__ import annotations

import pytest

from appliance.cluster import Clusterer, KeyField, cluster, parse_keys, turn_around
from appliance.fields import FieldError


def status_records(make_record):
    """A TCP session cut into three records by the status interval, as a sensor reports it."""
    return [
        make_record(seq=1, cause="Status", stime=100.0, ltime=104.5, state="CON", spkts=3,
                    dpkts=2, sbytes=300, dbytes=200, sappbytes=100, dappbytes=50, sflags="SA",
                    dflags="SA", sttl=64, dttl=None, smaxsz=200, sminsz=60, dmaxsz=150,
                    dminsz=60, flgs=" e       ", synack=0.02, ackdat=0.001, tcprtt=0.021),
        make_record(seq=2, cause="Status", stime=105.0, ltime=109.0, state="CON", spkts=1,
                    dpkts=0, sbytes=1000, dbytes=0, sappbytes=946, dappbytes=0, sflags="PA",
                    dflags="", sttl=63, dttl=None, smaxsz=1000, sminsz=1000, dmaxsz=0,
                    dminsz=0, flgs=" e    s  ", synack=0.0, ackdat=0.0, tcprtt=0.0,
                    sretrans=1),
        make_record(seq=3, cause="Stop", stime=110.0, ltime=111.0, state="FIN", spkts=2,
                    dpkts=2, sbytes=120, dbytes=2000, sappbytes=0, dappbytes=1890,
                    sflags="FA", dflags="FPA", sttl=None, dttl=57, smaxsz=60, sminsz=58,
                    dmaxsz=1900, dminsz=100, flgs=" e  F    ", synack=0.0, ackdat=0.0,
                    tcprtt=0.0, dretrans=2),
    ]


def test_status_records_merge_into_one_session(make_record):
    (m,) = cluster(status_records(make_record))
    assert (m["stime"], m["ltime"], m["dur"]) == (100.0, 111.0, 11.0)
    assert (m["spkts"], m["dpkts"], m["pkts"]) == (6, 4, 10)
    assert (m["sbytes"], m["dbytes"], m["bytes"]) == (1420, 2200, 3620)
    assert (m["sappbytes"], m["dappbytes"], m["appbytes"]) == (1046, 1940, 2986)
    assert (m["sretrans"], m["dretrans"]) == (1, 2)
    assert m["trans"] == 3
    assert m["state"] == "FIN" and m["cause"] == "Stop" and m["seq"] == 1 and m["dir"] == "->"
    assert (m["sflags"], m["dflags"]) == ("FSPA", "FSPA")
    assert m["flgs"] == " e  F s  "
    assert (m["sttl"], m["dttl"]) == (63, 57)                  # last value seen
    assert (m["smaxsz"], m["sminsz"], m["dmaxsz"], m["dminsz"]) == (1000, 58, 1900, 60)
    assert (m["synack"], m["ackdat"], m["tcprtt"]) == (0.02, 0.001, 0.021)
    assert m["saddr"] == "10.0.0.1" and m["dport"] == 80


def test_norep_reports_no_record_count(make_record):
    (m,) = cluster(status_records(make_record), norep=True)
    assert m["trans"] == 0 and m["pkts"] == 10


def test_merged_clusters_can_merge_again(make_record):
    recs = status_records(make_record)
    first = list(cluster(recs[:2]))
    (m,) = cluster(first + recs[2:])
    assert m["trans"] == 3


def test_one_way_udp_stays_int(make_record):
    recs = [make_record(proto=17, state="INT", stime=1.0, ltime=2.0),
            make_record(proto=17, state="REQ", stime=6.0, ltime=7.0)]
    (m,) = cluster(recs)
    assert m["state"] == "INT"
    recs.append(make_record(proto=17, state="CON", stime=8.0, ltime=9.0))
    (m,) = cluster(recs)
    assert m["state"] == "CON"


def test_reversed_records_are_turned_around_with_the_default_key(make_record):
    fwd = make_record(stime=1.0, ltime=2.0, spkts=3, dpkts=1, sbytes=300, dbytes=60, sttl=64,
                      dttl=50)
    rev = turn_around(make_record(stime=5.0, ltime=6.0, spkts=2, dpkts=4, sbytes=120,
                                  dbytes=400, dir="<?>", sttl=64, dttl=50))
    assert (rev["saddr"], rev["sport"], rev["spkts"]) == ("198.18.0.1", 80, 4)
    (m,) = cluster([fwd, rev])
    assert (m["saddr"], m["spkts"], m["dpkts"], m["sbytes"], m["dbytes"]) == ("10.0.0.1", 5, 5, 420, 460)
    assert (m["sttl"], m["dttl"], m["dir"]) == (64, 50, "->")
    assert len(list(cluster([fwd, rev], correct=False))) == 2


def test_arp_is_not_turned_around(make_record):
    a = make_record(proto=0x0806, saddr="10.0.0.1", daddr="10.0.0.2", sport=None, dport=None)
    b = make_record(proto=0x0806, saddr="10.0.0.2", daddr="10.0.0.1", sport=None, dport=None)
    assert len(list(cluster([a, b]))) == 2


def test_srcid_is_part_of_the_default_key(make_record):
    assert len(list(cluster([make_record(srcid="a"), make_record(srcid="b")]))) == 2


def test_default_order_is_by_last_update(make_record):
    a1 = make_record(sport=1, stime=1.0, ltime=1.0)
    b = make_record(sport=2, stime=2.0, ltime=2.0)
    a2 = make_record(sport=1, stime=3.0, ltime=3.0)
    c = make_record(sport=3, stime=4.0, ltime=4.0)
    assert [m["sport"] for m in cluster([a1, b, a2, c])] == [2, 1, 3]


def test_keys_with_masks(make_record):
    recs = [make_record(saddr="10.0.1.5", daddr="8.8.8.8", sport=1000),
            make_record(saddr="10.0.1.200", daddr="8.8.4.4", sport=1001),
            make_record(saddr="10.0.2.1", daddr="8.8.8.8", sport=1002),
            make_record(saddr="2001:db8:1::5", daddr="2001:db8:2::1", sport=1003),
            make_record(saddr="2001:db8:1::6", daddr="2001:db8:2::1", sport=1003)]
    out = list(cluster(recs, parse_keys(["saddr/24"])))
    assert [(m["saddr"], m["trans"]) for m in out] == [("10.0.1.0", 2), ("10.0.2.0", 1),
                                                       ("2001:d00::", 2)]   # Argus masks IPv6 too
    # outside the key: kept when all merged records agree, else empty
    assert out[0]["daddr"] is None and out[0]["sport"] is None and out[0]["proto"] == 6
    assert out[1]["daddr"] == "8.8.8.8"
    v6 = list(cluster(recs, parse_keys(["saddr/16"])))
    assert [m["saddr"] for m in v6] == ["10.0.0.0", "2001::"]
    dotted = list(cluster(recs, parse_keys(["saddr/255.255.0.0"])))
    assert [m["saddr"] for m in dotted][0] == "10.0.0.0"


def test_explicit_keys_sort_output_and_do_not_correct(make_record):
    recs = [make_record(saddr="10.0.0.9", daddr="10.0.0.1"),
            make_record(saddr="10.0.0.1", daddr="10.0.0.9"),
            make_record(saddr="10.0.0.10", daddr="10.0.0.1")]
    out = list(cluster(recs, parse_keys(["saddr", "daddr"])))
    assert [m["saddr"] for m in out] == ["10.0.0.1", "10.0.0.9", "10.0.0.10"]


def test_parse_keys():
    assert parse_keys(["saddr", "daddr"]) == [KeyField("saddr"), KeyField("daddr")]
    assert parse_keys(["dport"]) == [KeyField("proto"), KeyField("dport")]
    assert parse_keys(["saddr/24"]) == [KeyField("saddr", 24)]
    assert parse_keys(["svid"]) == [KeyField("svlan")]
    assert parse_keys(["none"]) == []
    for bad in (["bogus"], ["proto/8"], ["saddr/200"], ["saddr/255.0.255.0"], ["trans"]):
        with pytest.raises(FieldError):
            parse_keys(bad)


def test_null_key_merges_everything(make_record):
    recs = [make_record(sport=1), make_record(proto=17, sport=2, saddr="10.9.9.9")]
    (m,) = cluster(recs, parse_keys(["none"]))
    assert m["trans"] == 2 and m["proto"] is None and m["saddr"] is None and m["daddr"] == "198.18.0.1"


def test_clusterer_accepts_records_one_by_one(make_record):
    c = Clusterer()
    for r in status_records(make_record):
        c.add(r)
    assert [m["trans"] for m in c.results()] == [3]
