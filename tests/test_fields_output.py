"""Field registry (labels, -s lists, formatting) and the writers (text, -c, -M json, streams)."""

from __future__ import annotations

import io
import json

import pytest

from appliance import fields
from appliance.fields import FieldError, FormatOptions, formatter, parse_field_list
from appliance.output import StreamError, make_writer, read_stream

# Labels exactly as Debian's argus-client 3.0.8 prints them (ra -X -c , -L0 -s FIELD).
ARGUS_LABELS = {
    "srcid": "SrcId", "seq": "Seq", "cause": "Cause", "stime": "StartTime", "ltime": "LastTime",
    "dur": "Dur", "trans": "Trans", "proto": "Proto", "saddr": "SrcAddr", "daddr": "DstAddr",
    "sport": "Sport", "dport": "Dport", "dir": "Dir", "state": "State", "spkts": "SrcPkts",
    "dpkts": "DstPkts", "sbytes": "SrcBytes", "dbytes": "DstBytes", "sappbytes": "SAppBytes",
    "dappbytes": "DAppBytes", "pkts": "TotPkts", "bytes": "TotBytes", "appbytes": "TotAppByte",
    "stos": "sTos", "dtos": "dTos", "sttl": "sTtl", "dttl": "dTtl", "smac": "SrcMac",
    "dmac": "DstMac", "svlan": "sVlan", "dvlan": "dVlan", "svid": "sVid", "dvid": "dVid",
    "smpls": "sMpls", "dmpls": "dMpls", "synack": "SynAck", "ackdat": "AckDat",
    "tcprtt": "TcpRtt", "sretrans": "SrcRetra", "dretrans": "DstRetra", "sloss": "SrcLoss",
    "dloss": "DstLoss", "smaxsz": "sMaxPktSz", "sminsz": "sMinPktSz", "dmaxsz": "dMaxPktSz",
    "dminsz": "dMinPktSz", "flgs": "Flgs", "sgap": "SrcGap", "dgap": "DstGap",
}
TUTORIAL = "stime ltime proto saddr sport daddr dport spkts dpkts sbytes dbytes sappbytes dappbytes state"


def render(records, items=(), delimiter=None, label_every=0, **opts):
    out = io.StringIO()
    fmt = FormatOptions(delimited=delimiter is not None, **opts)
    w = make_writer(out, parse_field_list(items), fmt, delimiter, label_every)
    for r in records:
        w.write(r)
    w.close()
    return out.getvalue().splitlines()


@pytest.mark.parametrize("name, label", sorted(ARGUS_LABELS.items()))
def test_labels_are_argus(name, label):
    assert fields.resolve(name).label == label


def test_every_record_key_has_a_field_and_the_whitelist_is_the_record():
    for key in fields.RECORD_KEYS:
        assert fields.resolve(key).key == key
    assert fields.WHITELIST == frozenset(fields.RECORD_KEYS)
    assert all(k.isidentifier() for k in fields.WHITELIST)
    assert fields.resolve("svid").key == "svlan" and fields.resolve("dloss").key == "dretrans"


def test_csv_header_for_the_tutorial_command(make_record):
    lines = render([make_record()], TUTORIAL.split(), ",", numeric=1, utime=True)
    assert lines[0] == ("StartTime,LastTime,Proto,SrcAddr,Sport,DstAddr,Dport,SrcPkts,DstPkts,"
                        "SrcBytes,DstBytes,SAppBytes,DAppBytes,State")
    assert lines[1] == ("1700000000.000000,1700000001.500000,tcp,10.0.0.1,40000,198.18.0.1,80,"
                        "5,4,600,3000,300,2700,FIN")


def test_default_fields_are_ras(make_record):
    assert [f.name for f in parse_field_list([])] == list(fields.DEFAULT_FIELDS)
    header = render([make_record()], utime=True)[0]
    assert header.split() == ["StartTime", "Flgs", "Proto", "SrcAddr", "Sport", "Dir",
                              "DstAddr", "Dport", "TotPkts", "TotBytes", "State"]


def test_field_list_edits_like_argus():
    names = lambda items: [f.name for f in parse_field_list(items)]   # noqa: E731
    assert names(["stime", "saddr"]) == ["stime", "saddr"]
    assert names(["+srcid"]) == list(fields.DEFAULT_FIELDS) + ["srcid"]
    assert names(["+2srcid"])[:3] == ["stime", "flgs", "srcid"]
    assert names(["-flgs", "-state"]) == [n for n in fields.DEFAULT_FIELDS if n not in ("flgs", "state")]
    assert names(["stime", "+1srcid"]) == ["stime", "srcid"]
    f = parse_field_list(["saddr:5"])[0]
    assert (f.width, f.width_set) == (5, True)
    for bad in (["bogus"], ["saddr:0"], ["saddr:x"], ["-bogus"]):
        with pytest.raises(FieldError):
            parse_field_list(bad)


def test_aligned_text_matches_ra(make_record):
    # Copied from `ra -X -u -n` on tcpreplay-test.pcap (default fields, with -u).
    r = make_record(stime=1278472580.653563, ltime=1278472581.426437, saddr="172.16.11.12",
                    sport=64581, daddr="216.34.181.45", dport=80, spkts=21, dpkts=33,
                    sbytes=1867, dbytes=45154, state="CON")
    arp = make_record(stime=1278472580.015741, proto=0x0806, saddr="172.16.11.1", sport=None,
                      daddr="172.16.11.194", dport=None, dir="who", spkts=1, dpkts=0, sbytes=42,
                      dbytes=0, state="INT")
    icmp = make_record(stime=1278472580.566743, proto=1, saddr="10.31.0.1", sport=8,
                       daddr="10.34.0.1", dport=0x660F, dir="<->", spkts=1, dpkts=1, sbytes=122,
                       dbytes=114, state="ECO", flgs=" *       ")
    v6 = make_record(stime=1278472580.966743, saddr="2001:4958:15a0:24:c1b3:b766:7fff:d0b3",
                     sport=43250, daddr="2606:4700::6812:69c", spkts=6, dpkts=4, sbytes=609,
                     dbytes=1023)
    assert render([r, arp, icmp, v6], numeric=1, utime=True) == [
        "         StartTime      Flgs  Proto            SrcAddr  Sport   Dir            DstAddr  Dport  TotPkts   TotBytes State ",
        " 1278472580.653563  e           tcp       172.16.11.12.64581     ->      216.34.181.45.80           54      47021   CON",
        " 1278472580.015741  e           arp        172.16.11.1          who      172.16.11.194               1         42   INT",
        " 1278472580.566743  *          icmp          10.31.0.1.0x0008   <->          10.34.0.1.0x660f        2        236   ECO",
        " 1278472580.966743  e           tcp 2001:4958:15a0:24*.43250     -> 2606:4700::6812:6*.80           10       1632   FIN",
    ]


def test_delimited_keeps_ras_padding_of_dir_and_flgs(make_record):
    lines = render([make_record(dir="<?>")], ["flgs", "dir", "proto"], ",")
    assert lines == ["Flgs,Dir,Proto", " e        ,  <?>,tcp"]


def test_names_and_numbers(make_record):
    dns = make_record(proto=17, sport=5353, dport=53)
    assert render([dns], ["proto", "sport", "dport"], ",")[1] == "udp,mdns,domain"
    assert render([dns], ["proto", "sport", "dport"], ",", numeric=1)[1] == "udp,5353,53"
    assert render([dns], ["proto", "sport", "dport"], ",", numeric=2)[1] == "17,5353,53"
    icmp6 = make_record(proto=58, saddr="fe80::1", daddr="ff02::1", sport=135, dport=0)
    assert render([icmp6], ["proto", "sport"], ",", numeric=1)[1] == "ipv6-icmp,135"
    llc = make_record(proto=0, saddr="01:80:c2:00:00:00", daddr="fe:54:00:d8:46:21", sport=66,
                      dport=66)
    assert render([llc], ["proto", "sport"], ",")[1] == "llc,stp"
    assert render([llc], ["proto", "sport"], ",", numeric=2)[1] == "0,66"
    odd = make_record(proto=0x0D08, saddr="00:00:00:00:cc:07", daddr="0d:08:00:00:cc:00")
    assert render([odd], ["proto"], ",")[1] == "unknown"
    assert render([odd], ["proto"], ",", numeric=1)[1] == str(0x0D08)
    assert render([make_record(proto=165)], ["proto"], ",", numeric=1)[1] == "unas"


def test_times(make_record, utc):
    r = make_record(stime=1700000000.25, ltime=1700000061.000001)
    assert render([r], ["stime", "ltime", "dur"], ",")[1] == "22:13:20.250000,22:14:21.000001,60.750001"
    assert render([r], ["stime", "ltime"], ",", utime=True)[1] == "1700000000.250000,1700000061.000001"
    r = make_record(stime=1700000000.9999996)   # rounds into the next second, not to .1000000
    assert render([r], ["stime"], ",", utime=True)[1] == "1700000001.000000"
    assert render([r], ["stime"], ",")[1] == "22:13:21.000000"


def test_missing_values_print_empty(make_record):
    r = make_record(sport=None, dport=None, dttl=None, svlan=None, conn_state=None)
    assert render([r], ["sport", "dport", "dttl", "svlan", "conn_state"], ",")[1] == ",,,,"


def test_z_flags_in_the_state_column(make_record):
    r = make_record(sflags="SPAF", dflags="ASRE")
    assert render([r], ["state"], ",", zflags="b")[1] == "FSPA_SRA7"
    assert render([r], ["state"], ",", zflags="s")[1] == "FSPA"
    assert render([r], ["state"], ",", zflags="d")[1] == "SRA7"
    assert render([make_record(proto=17, state="CON")], ["state"], ",", zflags="b")[1] == "CON"
    # aligned, ra cuts the 5-wide State column with '*'
    assert render([r], ["state"], zflags="b")[1] == "FSPA*"
    assert render([r], ["state:12"], zflags="b")[1] == "   FSPA_SRA7"


def test_label_lines(make_record):
    recs = [make_record(seq=i) for i in range(5)]
    assert render(recs, ["seq"], ",") == ["Seq", "0", "1", "2", "3", "4"]
    assert render(recs, ["seq"], ",", label_every=-1) == ["0", "1", "2", "3", "4"]
    assert render(recs, ["seq"], ",", label_every=2) == ["Seq", "0", "1", "Seq", "2", "3", "Seq", "4"]
    assert render([], ["seq"], ",") == []   # like ra: no label line when nothing matched


def test_explicit_width_truncates_with_a_star(make_record):
    assert render([make_record()], ["saddr:5"]) == ["SrcAd ", "10.0*"]
    assert render([make_record()], ["saddr:5", "daddr"], ",")[1] == "10.0*,198.18.0.1"


def test_json_lines(make_record):
    out = io.StringIO()
    w = make_writer(out, parse_field_list(["stime", "saddr", "svid", "trans"]), FormatOptions(),
                    json_lines=True)
    w.write(make_record(svlan=7))
    assert json.loads(out.getvalue()) == {"stime": 1700000000.0, "saddr": "10.0.0.1", "svid": 7,
                                          "trans": 1}


def test_record_stream_round_trip(make_record):
    recs = [make_record(seq=1), make_record(seq=2, svlan=3, sport=None),
            dict(make_record(seq=3), trans=4), make_record(seq=4, saddr="2001:db8::1")]
    out = io.StringIO()
    w = make_writer(out, [], FormatOptions(), stream=True)
    for r in recs:
        w.write(r)
    text = out.getvalue()
    assert text.splitlines()[0] == '{"flowtap":"records","version":1}'
    assert list(read_stream(io.StringIO(text), batch=2)) == recs
    assert list(read_stream(io.StringIO(text))) == recs


@pytest.mark.parametrize("text, message", [
    ("", "-: not a flowtap record stream"),
    ("StartTime,Proto\n", "-: not a flowtap record stream"),
    ('{"flowtap":"records","version":1}\n[1,2]\n', "-: line 2: not a record"),
    ('{"flowtap":"records","version":1}\n{"keys":["a","b"]}\n[1,2]\n[1,\n', "-: line 4: not a record"),
    ('{"flowtap":"records","version":1}\n{"keys":["a"]}\n[1,2]\n', "-: line 3: not a record"),
])
def test_bad_streams(text, message):
    with pytest.raises(StreamError) as info:
        list(read_stream(io.StringIO(text)))
    assert str(info.value).startswith(message)


def test_formatters_are_built_once_per_field(make_record):
    fmt = formatter(fields.resolve("sport"), FormatOptions(numeric=1))
    assert fmt(make_record(sport=1)) == "1"
    assert fmt(make_record(proto=1, sport=0x0303)) == "0x0303"


def test_sort_values(make_record):
    recs = [make_record(saddr="10.0.0.10", bytes=5), make_record(saddr="10.0.0.9", bytes=50),
            make_record(saddr="2001:db8::1", bytes=7), make_record(saddr="00:11:22:33:44:55", bytes=1)]
    by_addr = sorted(recs, key=fields.sort_value(fields.resolve("saddr")))
    assert [r["saddr"] for r in by_addr] == ["10.0.0.9", "10.0.0.10", "2001:db8::1",
                                            "00:11:22:33:44:55"]
    by_bytes = sorted(recs, key=fields.sort_value(fields.resolve("bytes")))
    assert [r["bytes"] for r in by_bytes] == [50, 7, 5, 1]
