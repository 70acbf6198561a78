"""racluster: merge records that share a flow key into one record per key.

The default key is Argus's: ``srcid proto saddr sport daddr dport`` ("the same flow and argus
probe", racluster(1)), in "correct" mode: a record whose reversed key is already known is turned
around and merged into it. ``-m`` keys (``saddr/24``, ``daddr``, ``proto``, ``smac``, ``none``, ...)
switch correction off, as in Argus; ``sport``/``dport`` imply ``proto``.

How fields merge (``a`` is the cluster so far, ``r`` the next record):

* counters add up (packets, bytes, app bytes, retransmissions, gaps); ``trans`` counts the
  records merged (0 with ``-M norep``, as racluster prints);
* ``stime`` is the minimum, ``ltime`` the maximum, ``dur`` their difference;
* ``state`` and ``cause`` are the last record's, except that a one-way continuation (``REQ``)
  leaves an ``INT`` flow ``INT``, as racluster does; ``dir`` and ``seq`` are the first record's;
* TCP flags (``sflags``/``dflags``) and ``flgs`` letters are OR'd;
* TTL, TOS, VLAN, MPLS, MACs, ``conn_state`` and ``history``: the last value seen;
* ``smaxsz``/``dmaxsz`` the maximum, ``sminsz``/``dminsz`` the minimum over records in which
  that side sent packets; ``synack``/``ackdat``/``tcprtt`` the first measured (non-zero) value;
* key fields hold the (masked) key; other address, port, protocol and ``community_id`` fields
  keep their value when every merged record agrees and become empty (None) otherwise.

Output order is racluster's: with the default key, clusters come out in the order of the record
that last updated each (a flow whose status records run to the end of the input comes out late);
with ``-m`` keys, sorted by the key fields (addresses numerically, numbers ascending; racluster
sorts ``proto`` descending, flowtap ascending). Address masks apply to IPv6 too (``saddr/16``
keeps 16 bits), as in Argus. Correction (reversed keys) skips ARP, as Argus does.

Example::

    merged = list(cluster(records, parse_keys(["saddr/24", "daddr"])))
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Iterable, Iterator, Sequence

from . import capture as _capture
from . import fields as _fields
from . import record as _record

# Which columns each rule merges (appliance/record.py's merge entries).
SUMS = _record.merging("sum")
LAST = _record.merging("last")
IDENTITY = _record.merging("identity")
RTT = _record.merging("rtt")
# s/d pairs that change places when a record is turned around.
PAIRS = _record.PAIRS
DEFAULT_KEY = ("srcid", "proto", "saddr", "sport", "daddr", "dport")
_FLAG_ORDER = _capture.ffi.string(_capture.lib.sensor_cluster_letter_order).decode()   # cluster.c's
# flgs columns where two different letters mean "both sides" in Argus (s+d -> *, i+r -> &).
_BOTH = {frozenset("sd"): "*", frozenset("ir"): "&", frozenset("SD"): "@", frozenset("xt"): "E"}


@dataclasses.dataclass(frozen=True)
class KeyField:
    """One ``-m`` item: a record key and, for addresses, an optional IPv4 prefix length."""

    key: str
    prefix: int | None = None


def parse_keys(items: Sequence[str]) -> list[KeyField]:
    """Parse racluster ``-m`` items (``saddr/24``, ``daddr/255.255.0.0``, ``proto``, ``none``).

    :raises fields.FieldError: for an unknown field or a bad mask.
    """
    keys: list[KeyField] = []
    for item in items:
        if item == "none":
            continue
        name, slash, mask = item.partition("/")
        field = _fields.resolve(name)
        if not field.stored:
            raise _fields.FieldError(f"{name!r} cannot be a cluster key")
        prefix = None
        if slash:
            if field.kind != "addr":
                raise _fields.FieldError(f"only addresses take a mask: {item!r}")
            try:
                prefix = (int(mask) if mask.isdigit()
                          else ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen)
            except ValueError:
                prefix = -1
            if not 0 <= prefix <= 128:
                raise _fields.FieldError(f"bad mask in {item!r}: a length 0-128 or a.b.c.d")
        keys.append(KeyField(field.key, prefix))
    names = [k.key for k in keys]
    if ("sport" in names or "dport" in names) and "proto" not in names:
        keys.insert(0, KeyField("proto"))
    return keys


def _mask(addr: str | None, prefix: int) -> str | None:
    """The network address of ``addr`` under ``prefix`` (at most 32 bits for IPv4, as Argus also
    masks IPv6 with the same length); MACs and other text unchanged."""
    if addr is None or _fields.address_family(addr) == 0:
        return addr
    if "." in addr:
        prefix = min(prefix, 32)
    try:
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)
    except ValueError:
        return addr


def turn_around(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with source and destination exchanged."""
    r = dict(record)
    for s, d in PAIRS:
        if s in r or d in r:
            r[s], r[d] = record.get(d), record.get(s)
    return r


def _or_letters(a: str | None, b: str | None) -> str:
    have = set(a or "") | set(b or "")
    return "".join(c for c in _FLAG_ORDER if c in have) + "".join(
        sorted(c for c in have if c not in _FLAG_ORDER))


def _or_flgs(a: str | None, b: str | None) -> str:
    """Merge two Argus flgs strings column by column."""
    a, b = a or "", b or ""
    if len(a) != len(b):
        return b if len(b) > len(a) else a
    out = []
    for x, y in zip(a, b):
        if x == y or y == " ":
            out.append(x)
        elif x == " ":
            out.append(y)
        else:
            out.append(_BOTH.get(frozenset((x, y)), y))
    return "".join(out)


class Clusterer:
    """Accumulates records into clusters; ``add`` each record, then iterate ``results()``.

    :param keys: ``-m`` keys from ``parse_keys``; None for the default 5-tuple (+srcid) key.
    :param norep: ``-M norep``: report ``trans`` as 0, like racluster.
    :param correct: merge reversed keys; defaults to on for the default key only.
    """

    def __init__(self, keys: Sequence[KeyField] | None = None, norep: bool = False,
                 correct: bool | None = None):
        self.keys = list(keys) if keys is not None else [KeyField(k) for k in DEFAULT_KEY]
        self.sort_by_key = keys is not None
        self.norep = norep
        self.correct = (keys is None) if correct is None else correct
        self._plain = [k.key for k in self.keys if k.prefix is None]
        self._masked = [(k.key, k.prefix) for k in self.keys if k.prefix is not None]
        self._key_names = {k.key for k in self.keys}
        self._table: dict[tuple, dict[str, Any]] = {}

    def _key(self, r: dict[str, Any]) -> tuple:
        if not self._masked:
            return tuple([r.get(k) for k in self._plain])
        return tuple([r.get(k) for k in self._plain] + [_mask(r.get(k), p) for k, p in self._masked])

    def add(self, record: dict[str, Any]) -> None:
        """Merge one record into its cluster (creating the cluster if new)."""
        key = self._key(record)
        table = self._table
        agg = table.pop(key, None)
        if agg is None and self.correct and record.get("proto") != 0x0806:   # not ARP, as Argus
            turned = turn_around(record)
            rkey = self._key(turned)
            agg = table.pop(rkey, None)
            if agg is not None:
                record, key = turned, rkey
        if agg is None:
            agg = self._start(record)
        else:
            self._merge(agg, record)
        table[key] = agg

    def _start(self, record: dict[str, Any]) -> dict[str, Any]:
        agg = dict(record)
        for k, p in self._masked:
            agg[k] = _mask(agg.get(k), p)
        agg["trans"] = record.get("trans", 1)
        agg["_vary"] = set()
        return agg

    def _merge(self, a: dict[str, Any], r: dict[str, Any]) -> None:
        for k in SUMS:
            if k in r:
                a[k] = (a.get(k) or 0) + (r[k] or 0)
        a["trans"] += r.get("trans", 1)
        if r["stime"] < a["stime"]:
            a["stime"] = r["stime"]
        if r["ltime"] > a["ltime"]:
            a["ltime"] = r["ltime"]
        a["dur"] = a["ltime"] - a["stime"]
        state = r.get("state")
        if not (state == "REQ" and a.get("state") == "INT"):
            a["state"] = state
        a["cause"] = r.get("cause")
        a["sflags"] = _or_letters(a.get("sflags"), r.get("sflags"))
        a["dflags"] = _or_letters(a.get("dflags"), r.get("dflags"))
        a["flgs"] = _or_flgs(a.get("flgs"), r.get("flgs"))
        for k in LAST:
            v = r.get(k)
            if v is not None:
                a[k] = v
        for side, pk in (("s", "spkts"), ("d", "dpkts")):
            mx, mn = side + "maxsz", side + "minsz"
            if r.get(pk):
                if r.get(mx) is not None and (a.get(mx) is None or r[mx] > a[mx]):
                    a[mx] = r[mx]
                if r.get(mn) is not None and (not a.get(mn) or r[mn] < a[mn]):
                    a[mn] = r[mn]
        for k in RTT:
            if not a.get(k) and r.get(k):
                a[k] = r[k]
        names = self._key_names
        for k in IDENTITY:
            if k not in names and a.get(k) != r.get(k):
                a["_vary"].add(k)

    def results(self) -> Iterator[dict[str, Any]]:
        """The merged records in racluster's order: by each cluster's last update for the
        default key, sorted by the key fields for ``-m`` keys."""
        aggs: Iterable[dict[str, Any]] = self._table.values()
        if self.sort_by_key:
            getters = [_fields.sort_value(_fields.FIELDS[k.key]) for k in self.keys]
            aggs = sorted(aggs, key=lambda a: tuple([g(a) for g in getters]))
        for agg in aggs:
            out = dict(agg)
            for k in out.pop("_vary"):
                out[k] = None
            if self.norep:
                out["trans"] = 0
            yield out


def cluster(records: Iterable[dict[str, Any]], keys: Sequence[KeyField] | None = None,
            norep: bool = False, correct: bool | None = None) -> Iterator[dict[str, Any]]:
    """Merge ``records`` by ``keys`` (see ``Clusterer``) and yield the merged records."""
    c = Clusterer(keys, norep=norep, correct=correct)
    for r in records:
        c.add(r)
    return c.results()
