"""The one column table of a session record: everything the Python side knows about each column.

A record leaves C as a ``sensor_flow_t`` (native/sensor.h). Each entry of ``COLUMNS`` says, for one
column of the record dict and the archive's ``flows`` table:

- ``c_field``: the ``sensor_flow_t`` member it comes from (``pkts[0]``; None: the sensor's id);
- ``value``: the Python expression ``capture.to_record`` evaluates for it, over the struct's
  members (``pkts_0`` is ``pkts[0]``) and the facts ``capture`` works out once per record;
- ``sql``: its SQL type in ``flows`` (None: derived by readers from ``derived``, not stored);
- ``label``, ``width``, ``kind``: ra's column label, width and formatter (appliance/fields.py);
  no label: not an ``-s`` field;
- ``merge``: how racluster merges it (appliance/cluster.py's rules, native/cluster.c's RULES);
- ``pair``: the other side's column, exchanged when a record is turned around;
- ``c_prints``: native/format.c prints it and native/cluster.c merges it (a ``SENSOR_FIELD_*`` id
  of the same name);
- ``ipfix``: the IPFIX Information Elements that carry it (appliance/ipfix.py), if any.

archive.py's schema, capture.py's ``to_record``, fields.py's field table, cluster.py's merge lists
and query.py's column lists are derived from it; tests/test_record_table.py checks the C side
(struct members, store.c's columns, cluster.c's rules, format.c's fields) against it, and shows a
column added here reaches the archive, ``ra -s``, JSON and racluster.

To add a column: add its member to ``sensor_flow_t`` (and fill it in flowtable.c), bind it in
native/store.c (native/store_columns.h and ``fill_row``), and add one entry here with
``c_prints=False`` (Python prints and merges it until format.c and cluster.c do).

Example::

    from appliance import record
    [c.name for c in record.COLUMNS if c.merge == "sum"]      # spkts dpkts ... dgap
"""
from __future__ import annotations

import dataclasses

# racluster merge rules (cluster.Clusterer implements them; cluster.c has the same names).
MERGES = frozenset(("first", "identity", "sum", "min", "max", "dur", "state", "lastany", "letters",
                    "flgs", "last", "maxsz", "minsz", "rtt"))


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a session record (see the module's docstring for each attribute)."""

    name: str
    c_field: str | None
    value: str
    sql: str | None
    label: str | None
    width: int
    kind: str
    merge: str
    pair: str | None = None
    c_prints: bool = True
    ipfix: tuple[str, ...] = ()
    derived: str | None = None      # SQL over stored columns, for a column that is not stored
    descending: bool = False        # rasort: volumes sort largest first
    centred: bool = False           # ra centres this label (only Seq)


def _c(name, c_field, value, sql, label, width, kind, merge, **kw) -> Column:
    return Column(name, c_field, value, sql, label, width, kind, merge, **kw)


# In the order of a record dict (capture.to_record) and of the flows table's columns.
COLUMNS: tuple[Column, ...] = (
    _c("srcid", None, "srcid", "TEXT", "SrcId", 18, "str", "identity"),
    _c("seq", "seq", "seq", "INTEGER", "Seq", 12, "int", "first", centred=True),
    _c("cause", "cause", "CAUSES[cause]", "TEXT", "Cause", 7, "str", "lastany",
       ipfix=("flowEndReason",)),
    _c("stime", "stime_us", "stime_us / 1e6", "REAL", "StartTime", 18, "time", "min",
       ipfix=("flowStartMilliseconds",)),
    _c("ltime", "ltime_us", "ltime_us / 1e6", "REAL", "LastTime", 18, "time", "max",
       ipfix=("flowEndMilliseconds",)),
    _c("dur", "ltime_us", "(ltime_us - stime_us) / 1e6", "REAL", "Dur", 10, "float", "dur",
       descending=True),
    _c("proto", "proto", "proto", "INTEGER", "Proto", 6, "proto", "identity",
       ipfix=("protocolIdentifier",)),
    _c("saddr", "addr[0]", "_addr(addr_type, addr_0)", "TEXT", "SrcAddr", 18, "addr", "identity",
       pair="daddr", ipfix=("sourceIPv4Address", "sourceIPv6Address")),
    _c("sport", "port[0]", "port_0 if ported else None", "INTEGER", "Sport", 6, "port", "identity",
       pair="dport", ipfix=("sourceTransportPort",)),
    _c("daddr", "addr[1]", "_addr(addr_type, addr_1)", "TEXT", "DstAddr", 18, "addr", "identity",
       ipfix=("destinationIPv4Address", "destinationIPv6Address")),
    _c("dport", "port[1]", "port_1 if ported else None", "INTEGER", "Dport", 6, "port", "identity",
       ipfix=("destinationTransportPort",)),
    _c("dir", "dir", "DIRS[dir]", "TEXT", "Dir", 5, "dir", "first", ipfix=("biflowDirection",)),
    _c("state", "state", "_icmp_state(proto, port_0, icmp_code) if state == ICMP_STATE "
       "else STATES[state]", "TEXT", "State", 5, "state", "state"),
    _c("spkts", "pkts[0]", "pkts_0", "INTEGER", "SrcPkts", 8, "int", "sum", pair="dpkts",
       descending=True, ipfix=("packetDeltaCount",)),
    _c("dpkts", "pkts[1]", "pkts_1", "INTEGER", "DstPkts", 8, "int", "sum", descending=True,
       ipfix=("reversePacketDeltaCount",)),
    _c("sbytes", "bytes[0]", "bytes_0", "INTEGER", "SrcBytes", 12, "int", "sum", pair="dbytes",
       descending=True, ipfix=("octetDeltaCount",)),
    _c("dbytes", "bytes[1]", "bytes_1", "INTEGER", "DstBytes", 12, "int", "sum", descending=True,
       ipfix=("reverseOctetDeltaCount",)),
    _c("sappbytes", "appbytes[0]", "appbytes_0", "INTEGER", "SAppBytes", 12, "int", "sum",
       pair="dappbytes", descending=True, ipfix=("transportOctetDeltaCount",)),
    _c("dappbytes", "appbytes[1]", "appbytes_1", "INTEGER", "DAppBytes", 12, "int", "sum",
       descending=True, ipfix=("reverseTransportOctetDeltaCount",)),
    _c("pkts", "pkts", "pkts_0 + pkts_1", None, "TotPkts", 8, "int", "sum", descending=True,
       derived="spkts + dpkts"),
    _c("bytes", "bytes", "bytes_0 + bytes_1", None, "TotBytes", 10, "int", "sum", descending=True,
       derived="sbytes + dbytes"),
    _c("appbytes", "appbytes", "appbytes_0 + appbytes_1", None, "TotAppByte", 10, "int", "sum",
       descending=True, derived="sappbytes + dappbytes"),
    _c("stos", "tos[0]", "tos_0 if sip and pkts_0 else None", "INTEGER", "sTos", 5, "int", "last",
       pair="dtos", ipfix=("ipClassOfService",)),
    _c("dtos", "tos[1]", "tos_1 if sip and pkts_1 else None", "INTEGER", "dTos", 5, "int", "last",
       ipfix=("reverseIpClassOfService",)),
    _c("sttl", "ttl[0]", "ttl_0 if sip and pkts_0 else None", "INTEGER", "sTtl", 4, "int", "last",
       pair="dttl", ipfix=("ipTTL",)),
    _c("dttl", "ttl[1]", "ttl_1 if sip and pkts_1 else None", "INTEGER", "dTtl", 4, "int", "last",
       ipfix=("reverseIpTTL",)),
    _c("smac", "mac[0]", "mac_0.hex(':')", "TEXT", "SrcMac", 18, "str", "last", pair="dmac",
       ipfix=("sourceMacAddress",)),
    _c("dmac", "mac[1]", "mac_1.hex(':')", "TEXT", "DstMac", 18, "str", "last",
       ipfix=("destinationMacAddress",)),
    _c("svlan", "vlan[0]", "None if vlan_0 == 0xFFFF else vlan_0", "INTEGER", "sVlan", 8, "int",
       "last", pair="dvlan", ipfix=("vlanId",)),
    _c("dvlan", "vlan[1]", "None if vlan_1 == 0xFFFF else vlan_1", "INTEGER", "dVlan", 8, "int",
       "last", ipfix=("reverseVlanId",)),
    _c("smpls", "mpls[0]", "None if mpls_0 == 0xFFFFFFFF else mpls_0", "INTEGER", "sMpls", 8, "int",
       "last", pair="dmpls"),
    _c("dmpls", "mpls[1]", "None if mpls_1 == 0xFFFFFFFF else mpls_1", "INTEGER", "dMpls", 8, "int",
       "last"),
    _c("sflags", "tcpflags[0]", "_tcp_flags(tcpflags_0)", "TEXT", "sFlags", 8, "str", "letters",
       pair="dflags", ipfix=("tcpControlBits",)),
    _c("dflags", "tcpflags[1]", "_tcp_flags(tcpflags_1)", "TEXT", "dFlags", 8, "str", "letters",
       ipfix=("reverseTcpControlBits",)),
    _c("synack", "synack_us", "synack_us / 1e6", "REAL", "SynAck", 12, "float", "rtt"),
    _c("ackdat", "ackdat_us", "ackdat_us / 1e6", "REAL", "AckDat", 12, "float", "rtt"),
    _c("tcprtt", "synack_us", "(synack_us + ackdat_us) / 1e6", "REAL", "TcpRtt", 12, "float", "rtt"),
    _c("sretrans", "retrans[0]", "retrans_0", "INTEGER", "SrcRetra", 8, "int", "sum",
       pair="dretrans", descending=True),
    _c("dretrans", "retrans[1]", "retrans_1", "INTEGER", "DstRetra", 8, "int", "sum",
       descending=True),
    _c("sgap", "gaps[0]", "gaps_0", "INTEGER", "SrcGap", 8, "int", "sum", pair="dgap",
       descending=True),
    _c("dgap", "gaps[1]", "gaps_1", "INTEGER", "DstGap", 8, "int", "sum", descending=True),
    _c("smaxsz", "maxsz[0]", "maxsz_0", "INTEGER", "sMaxPktSz", 12, "int", "maxsz", pair="dmaxsz"),
    _c("sminsz", "minsz[0]", "minsz_0", "INTEGER", "sMinPktSz", 12, "int", "minsz", pair="dminsz"),
    _c("dmaxsz", "maxsz[1]", "maxsz_1", "INTEGER", "dMaxPktSz", 12, "int", "maxsz"),
    _c("dminsz", "minsz[1]", "minsz_1", "INTEGER", "dMinPktSz", 12, "int", "minsz"),
    _c("flgs", "flgs", "_flgs(flgs, has_mac)", "TEXT", "Flgs", 9, "flgs", "flgs"),
    _c("conn_state", "conn_state", "CONN_STATES[conn_state] if tcp else None", "TEXT", "ConnState",
       9, "str", "last"),
    _c("history", "history", "history.rstrip(b'\\0').decode() if tcp else None", "TEXT", "History",
       12, "str", "last"),
    _c("community_id", "addr", "community_id(proto, addr_type, addr_0, addr_1, port_0 if ported "
       "else None, port_1 if ported else None, icmp_code=icmp_code) if sip else None", "TEXT",
       "CommunityId", 30, "str", "identity", c_prints=False),
    _c("sintf", "ifindex", "ifindex", "INTEGER", None, 0, "int", "first", c_prints=False),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
# The flows table's columns and the totals readers derive (not stored).
STORED: tuple[Column, ...] = tuple(c for c in COLUMNS if c.sql)
DERIVED: dict[str, str] = {c.name: c.derived for c in COLUMNS if c.derived}
# ra fields of the record (with labels), in record order.
FIELD_COLUMNS: tuple[Column, ...] = tuple(c for c in COLUMNS if c.label)
# s/d columns that change places when a record is turned around.
PAIRS: tuple[tuple[str, str], ...] = tuple((c.name, c.pair) for c in COLUMNS if c.pair)


def merging(rule: str) -> tuple[str, ...]:
    """The columns racluster merges by ``rule``, in record order."""
    if rule not in MERGES:
        raise ValueError(f"no merge rule {rule!r}")
    return tuple(c.name for c in COLUMNS if c.merge == rule)
