"""The alert an IDS raised, as every reader yields it and the store keeps it.

Readers (``alert_formats``) turn Suricata EVE, Snort 3 ``alert_json``/``alert_csv``, ``alert_fast``
and unified2 into ``Alert``; the store (``alerts``) keeps them beside the archives and links them to
sessions at query time. Addresses are canonical text, as the archives keep them (IPv4 dotted,
IPv6 RFC 5952); protocols are numbers; times are Unix seconds (UTC) with µs resolution.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import struct
from typing import Any

# Protocols whose ports are part of the link (ICMP links by addresses: its "ports" are type/code).
PORT_PROTOS = (6, 17, 132)
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58, "icmpv6": 58, "ipv6-icmp": 58,
                 "sctp": 132, "igmp": 2, "gre": 47, "esp": 50, "ah": 51, "ip": 0, "ospf": 89,
                 "pim": 103, "vrrp": 112}


class AlertError(ValueError):
    """An alert line or record that cannot be read; the message says why."""


@dataclasses.dataclass(frozen=True)
class Alert:
    time: float                      # Unix seconds, UTC, µs resolution
    gid: int
    sid: int
    rev: int
    msg: str                         # the signature's message ("" when the format has none)
    proto: int | None                # IP protocol number
    saddr: str | None
    sport: int | None
    daddr: str | None
    dport: int | None
    format: str                      # eve, snort3-json, snort3-csv, fast, unified2
    raw: str                         # the line (or record) it was read from: makes the id
    priority: int | None = None
    classification: str | None = None
    community_id: str | None = None
    flow_id: int | None = None
    app_proto: str | None = None
    action: str | None = None

    @property
    def id(self) -> str:
        """Stable id (16 hex digits): the same line imported twice is the same alert."""
        return alert_id(self.format, self.raw)

    def as_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["id"] = self.id
        return row


def alert_id(fmt: str, raw: str) -> str:
    return hashlib.blake2b(f"{fmt}\0{raw}".encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def row_id(fmt: bytes, raw: bytes) -> int:
    """``alert_id`` of the UTF-8 text ``raw`` as SQLite's signed 64-bit rowid (the store's key)."""
    prefix = _ID_PREFIXES.get(fmt)
    if prefix is None:
        prefix = _ID_PREFIXES.setdefault(fmt, hashlib.blake2b(fmt + b"\0", digest_size=8))
    h = prefix.copy()               # a third faster than a new hash: an import hashes every line
    h.update(raw)
    return _ROWID.unpack(h.digest())[0]


_ID_PREFIXES: dict[bytes, Any] = {}
_ROWID = struct.Struct(">q")


# An alert as the store keeps it (``alerts.ALERT_NAMES`` but imported_at), ``id`` as ``row_id``.
ROW_FIELDS = ("id", "time", "gid", "sid", "rev", "msg", "priority", "classification", "proto",
              "saddr", "sport", "daddr", "dport", "community_id", "flow_id", "app_proto", "action",
              "format")


def row_of(a: Alert) -> tuple:
    """``a``'s values in ``ROW_FIELDS`` order."""
    return (row_id(a.format.encode(), a.raw.encode("utf-8", "surrogatepass")), a.time, a.gid, a.sid,
            a.rev, a.msg, a.priority, a.classification, a.proto, a.saddr, a.sport, a.daddr, a.dport,
            a.community_id, a.flow_id, a.app_proto, a.action, a.format)


def canonical_address(text: str) -> str:
    """An address as the archives spell it.

    :raises AlertError: not an IPv4 or IPv6 address.
    """
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise AlertError(f"not an IP address: {text[:60]!r}") from None


def proto_number(value: Any) -> int:
    """``TCP``, ``tcp``, ``6`` or 6 -> 6.

    :raises AlertError: unknown name or out of range.
    """
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    text = str(value).strip().lower()
    if text.isascii() and text.isdigit() and int(text) <= 255:
        return int(text)
    if text in PROTO_NUMBERS:
        return PROTO_NUMBERS[text]
    raise AlertError(f"unknown protocol: {str(value)[:30]!r}")
