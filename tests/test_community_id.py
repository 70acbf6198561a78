"""flowtap's Community ID (native/store.c, capture.community_id) against the spec's published values.

Expected values are copied from corelight/community-id-spec: ``baseline/baseline_deflt.json``
(the tuples of the spec's pcaps/combined.pcap.gz with their IDs, seed 0, base64) and the "Default
settings" table of ``baseline/README.md``. The spec's pcaps are binary and not at hand, so each
tuple is rebuilt as a one-packet capture with ``pcapgen``, as the spec's reference implementation
(``community-id.py``) reads it: for ICMP/ICMPv6 the "ports" are the type and the counterpart type
of a request/reply pair (code 0), or type and code for a one-way message. ICMP errors quote the
datagram they answer (RFC 792, RFC 4443), as every real one does; the spec hashes only type and code.
``EXTRA`` covers what those tables leave out (the other request/reply pairs, replies seen alone, errors
with a code other than 0), with values from the spec's recommended implementation, pycommunityid.
"""
from __future__ import annotations

import json
import sqlite3
import struct

import pytest

from appliance import archive, capture
from appliance.archive import ArchiveWriter
from appliance.cli import cli
from appliance.config import ArchiveConfig
from tests import pcapgen

# corelight/community-id-spec baseline/baseline_deflt.json: (proto, saddr, daddr, sport, dport, id)
BASELINE = [
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 136, 135, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0, "1:2ObVBgIn28oZvibYZhZMBgh7WdQ="),
    (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4, "1:hLZd0XGWojozrvxqE0dWB1iM6R0="),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 133, "1:pkvHqCL88/tg1k4cPigmZXUtL00="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (132, "192.168.170.8", "192.168.170.56", 7, 7, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (46, "10.1.12.1", "10.1.12.2", None, None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
    (46, "10.1.12.2", "10.1.12.1", None, None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
]

# corelight/community-id-spec baseline/README.md, "Default settings" table (ICMP rows give type
# and code there; the counterpart replaces the code for a request/reply type).
V6A, V6B = "fe80:1:203:405:607:809:a0b:c0d", "fe80:1011:1213:1415:1617:1819:1a1b:1c1d"
README_TABLE = [
    (6, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (6, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (17, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (17, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (132, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="),
    (132, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="),
    (1, "1.2.3.4", "5.6.7.8", 8, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="),
    (1, "5.6.7.8", "1.2.3.4", 0, 8, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="),
    (1, "1.2.3.4", "5.6.7.8", 11, 0, "1:f/YiSyWqczrTgfUCZlBUnvHRcPk="),
    (58, V6A, V6B, 128, 129, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="),
    (58, V6B, V6A, 129, 128, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="),
    (58, V6A, V6B, 146, 0, "1:fYC8+pz24E+EhANP1EZhpX0Dw10="),
    (46, "1.2.3.4", "5.6.7.8", None, None, "1:ikv3kmf89luf73WPz1jOs49S768="),
    (46, "5.6.7.8", "1.2.3.4", None, None, "1:ikv3kmf89luf73WPz1jOs49S768="),
    (46, V6A, V6B, None, None, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0="),
    (46, V6B, V6A, None, None, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0="),
]

# Not in the spec's published tables: tuples as above, IDs computed with pycommunityid 1.5.0
# (CommunityID(seed=0).calc(FlowTuple.make_icmp/make_icmp6(saddr, daddr, type, code))).
EXTRA = [
    (1, "192.168.144.2", "224.0.0.2", 10, 9, "1:gcJkuKZthn3yhR7wQLQmSVhO5f0="),       # router solicitation
    (1, "192.168.144.1", "192.168.144.2", 9, 10, "1:NsfqcTFnw7kWfy/mtAJkL9jirzM="),   # its advertisement
    (1, "192.168.144.2", "192.168.144.1", 10, 9, "1:NsfqcTFnw7kWfy/mtAJkL9jirzM="),
    (1, "10.0.0.7", "10.0.0.4", 14, 13, "1:myj1VMn0vrvfLo75u77U/bgTSUE="),            # timestamp reply alone
    (1, "10.0.0.4", "10.0.0.7", 13, 14, "1:myj1VMn0vrvfLo75u77U/bgTSUE="),
    (1, "172.16.11.1", "172.16.11.12", 3, 3, "1:gSGPajnSiFJ/GqVG1a2z8h5pf6g="),       # port unreachable
    (1, "10.0.0.138", "10.0.0.6", 5, 1, "1:WSMXl17AwLNwdV8QDlMyLe/m6gs="),            # host redirect
    (58, "fe80::1", "ff02::1", 130, 131, "1:twZ7KwCQHfwWp6Uon6NxD1a+VvM="),          # MLD query
    (58, "fe80::2", "fe80::1", 131, 130, "1:Pmn7mCHtn19srQiXm2sF0CDRRMA="),          # MLD report
    (58, "fe80::1", "fe80::2", 130, 131, "1:Pmn7mCHtn19srQiXm2sF0CDRRMA="),
    (58, "fe80::1", "fe80::2", 139, 140, "1:oPVhmQYL42iV9FGiMqdb38yGSeA="),          # node information
    (58, "fe80::2", "fe80::1", 140, 139, "1:oPVhmQYL42iV9FGiMqdb38yGSeA="),
    (58, "2001:db8::1", "2001:db8::2", 144, 145, "1:ms66bqjCiS0Nx3DNXCp9wH22xNw="),  # home agent discovery
    (58, "2001:db8::2", "2001:db8::1", 145, 144, "1:ms66bqjCiS0Nx3DNXCp9wH22xNw="),
    (58, "fe80::1", "ff02::16", 143, 0, "1:OAsYkgoou99wnhLR9ezvUt5gsiU="),           # MLDv2 report: one-way
    (58, "2001:db8::1", "2001:db8::2", 2, 0, "1:cJTDVjTYmTGrxBkMxo8zKdOAnh0="),      # packet too big
]

# The spec's request/reply pairs (pycommunityid's icmp.py and icmp6.py): their code is 0 on the wire.
PAIRED = {1: {8, 0, 13, 14, 15, 16, 9, 10, 17, 18},
          58: {128, 129, 133, 134, 135, 136, 130, 131, 139, 140, 144, 145}}
ERRORS = {1: {3, 4, 5, 11, 12}, 58: {1, 2, 3, 4}}     # messages that quote the offending datagram


def segment(proto: int, saddr: str, daddr: str, sport, dport) -> bytes:
    """The transport header the spec's tuple describes."""
    if proto == 6:
        return pcapgen.tcp(saddr, daddr, sport, dport, flags=pcapgen.SYN)
    if proto == 17:
        return pcapgen.udp(saddr, daddr, sport, dport, b"\0" * 8)
    if proto == 132:                                  # SCTP common header: ports, tag, checksum
        return struct.pack("!HHII", sport, dport, 0, 0)
    if proto in (1, 58):
        icmp_type, code = sport, 0 if sport in PAIRED[proto] else dport
        body = bytes(4)
        if icmp_type in ERRORS[proto]:                # quote a datagram daddr sent to someone
            original = pcapgen.ip_packet(daddr, saddr, 17, pcapgen.udp(daddr, saddr, 33434, 33435, b"x" * 8))
            body += original[:28] if proto == 1 else original[:48 + 8]
        message = struct.pack("!BBH", icmp_type, code, 0) + body
        if proto == 1:
            return message[:2] + struct.pack("!H", pcapgen.checksum(message)) + message[4:]
        csum = pcapgen.checksum(pcapgen.pseudo_header(saddr, daddr, 58, len(message)) + message)
        return message[:2] + struct.pack("!H", csum) + message[4:]
    return bytes(8)                                   # RSVP: no ports


def flowtap_community_ids(runner, path) -> list[str]:
    result = runner.invoke(cli, ["ra", "-n", "-M", "json", "-r", str(path), "-s", "community_id"])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["community_id"] for line in result.output.splitlines() if line.startswith("{")]


def cases():
    for source, rows in (("baseline_deflt.json", BASELINE), ("README.md", README_TABLE), ("extra", EXTRA)):
        for i, (proto, saddr, daddr, sport, dport, want) in enumerate(rows):
            yield pytest.param(proto, saddr, daddr, sport, dport, want,
                               id=f"{source}-{i}-{proto}-{saddr}-{sport}")


def one_packet(path, proto: int, saddr: str, daddr: str, sport, dport):
    """A capture of the one packet the spec's tuple describes."""
    frame = pcapgen.frame(saddr, daddr, proto, segment(proto, saddr, daddr, sport, dport))
    return pcapgen.write_pcap(path, [pcapgen.Packet(int(pcapgen.T0 * 1e6), frame)])


@pytest.mark.parametrize("proto, saddr, daddr, sport, dport, want", list(cases()))
def test_community_id_matches_spec(tmp_path, runner, proto, saddr, daddr, sport, dport, want):
    path = one_packet(tmp_path / "one.pcap", proto, saddr, daddr, sport, dport)
    assert flowtap_community_ids(runner, path) == [want]


def test_archives_store_the_spec_ids(tmp_path):
    """native/store.c, which fills the recorder's archives, gives every case above the spec's ID too."""
    raw, wants = [], []
    for i, case in enumerate(cases()):
        *spec_tuple, want = case.values
        (record,) = capture.meter_file_raw(str(one_packet(tmp_path / f"{i}.pcap", *spec_tuple)))
        raw.append(record)
        wants.append(want)
    now = pcapgen.T0 + 1
    writer = ArchiveWriter(ArchiveConfig(dir=str(tmp_path / "archive")), "test", "cases", "digest")
    writer.add_packed(b"".join(capture.RECORD.pack(*r) for r in raw), now)
    writer.close(now)
    (path,) = archive.list_archives(tmp_path / "archive")
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as conn:
        stored = [row[0] for row in conn.execute("SELECT community_id FROM flows ORDER BY rowid")]
    assert stored == wants


def test_both_directions_of_a_session_share_the_id(tmp_path, runner):
    """A whole TCP session and an echo exchange: one record each, with the spec's ID."""
    tcp = pcapgen.tcp_session("128.232.110.120", "66.35.250.204", 34855, 80, [100], [200], close="fin")
    ping = pcapgen.ping("192.168.0.89", "192.168.0.1", count=2)
    path = pcapgen.write_pcap(tmp_path / "two.pcap", pcapgen.merge(tcp, ping))
    assert sorted(flowtap_community_ids(runner, path)) == sorted(
        ["1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="])
