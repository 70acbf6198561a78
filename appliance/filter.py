"""The Argus filter language (ra(1) FILTER EXPRESSION), parsed once and compiled two ways.

``parse(text)`` gives an AST; ``compile_predicate(ast)`` a ``record -> bool`` for streams and
``compile_sql(ast)`` a parameterised ``WHERE`` clause for SQLite archives. Both come from the same
AST and agree on every record, NULLs included (a comparison with a missing value is false, so
``not`` of it is true, in Python and in SQL alike).

Grammar (as in Argus and tcpdump, ``and`` and ``or`` have EQUAL precedence and associate left to
right; ``not``/``!`` binds tightest)::

    expr      := unary (("and" | "&&" | "or" | "||") unary)*
    unary     := ("not" | "!") unary | "(" expr ")" | primitive
    primitive := [proto-qual] [dir] [type] id   e.g. "tcp dst port 80", "src net 10.1", "10.0.0.1"
               | [dir] numeric-field [op] number  e.g. "pkts gt 10", "src bytes >= 1000", "ttl 64"
               | [dir] tcp-flag | state | proto-name | "man" | "state NAME" | "cause NAME"
               | "alert" | "sid" N | "gid" N   (an imported IDS alert links to the record)

A bare id repeats the last host/net/port qualifiers (``port 80 or 443``, ``host a and b``); with
none before it, ``host`` is assumed. Addresses compare as canonical text (IPv4 dotted, IPv6
RFC 5952), so SQL can use the ``saddr``/``daddr`` indexes; CIDR tests and address families use two
SQL functions that ``register_sql_functions(conn)`` installs: ``ft_in_net(addr, 'net/len')`` and
``ft_family(addr)`` (4, 6, or 0 for MAC/none).

Meanings worth knowing (Argus is vague here): ``fin`` is the TCP primitive "a FIN was seen" (it
matches every record whose state is FIN and also connections still closing); use ``state FIN`` for
the state alone. ``syn``/``fin``/``reset``/``rst``/``ack``/``push``/``urg``/``ecn`` read the
per-direction flag columns ``sflags``/``dflags`` (``src syn``: the source sent a SYN); ``synack``
means the destination sent SYN and ACK; ``retrans`` means a retransmission was counted. ``est``
and ``con`` match state CON (or EST), ``timeout`` cause Timeout (or state TIM). ``man`` matches
nothing: flowtap has no management records in its stream, so ``- not man`` keeps everything.
``port`` matches TCP, UDP and SCTP only (ICMP keeps type and code in the port columns).

Example::

    ast = parse("tcp and dst port 80 and not src net 10.0.0.0/8")
    keep = compile_predicate(ast)
    where, params = compile_sql(ast)
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as _dt
import functools
import ipaddress
import re
import socket
import sqlite3
import time
from typing import Any, Callable, Sequence

from . import fields as _fields


class FilterError(ValueError):
    """A filter (or -t time range) that does not parse; ``position`` is a 1-based column."""

    def __init__(self, message: str, position: int):
        super().__init__(message, position)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        return f"filter error at column {self.position}: {self.message}"


# --- AST --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class And:
    left: Any
    right: Any


@dataclasses.dataclass(frozen=True)
class Or:
    left: Any
    right: Any


@dataclasses.dataclass(frozen=True)
class Not:
    expr: Any


@dataclasses.dataclass(frozen=True)
class Const:
    value: bool


@dataclasses.dataclass(frozen=True)
class Compare:
    """``key op value``; false when the record's value is missing (None/NULL)."""

    key: str
    op: str          # one of OPS
    value: Any


@dataclasses.dataclass(frozen=True)
class OneOf:
    """``key`` is one of ``values``; false when the record's value is missing."""

    key: str
    values: tuple


@dataclasses.dataclass(frozen=True)
class InNet:
    key: str
    net: str         # canonical "addr/len"


@dataclasses.dataclass(frozen=True)
class Family:
    """An IP flow (proto <= 255) whose source address is of IP version ``version``."""

    version: int


@dataclasses.dataclass(frozen=True)
class HasFlag:
    """``letter`` occurs in the string column ``key`` from 0-based offset ``start`` on."""

    key: str
    letter: str
    start: int = 0


@dataclasses.dataclass(frozen=True)
class Linked:
    """Some imported IDS alert links to the record (``alert``), with this signature (``sid N``,
    ``gid N``). Over archives it reads ``temp.ft_linked``, which ``query.plan_file`` fills from the
    alert store beside the archive (``alerts.linked_rowids``); said of an alert, it tests the
    alert's own sid/gid."""

    sid: int | None = None
    gid: int | None = None


OPS = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_OP_WORDS = {
    "eq": "eq", "=": "eq", "==": "eq", "ne": "ne", "!=": "ne", "gt": "gt", ">": "gt",
    "ge": "ge", "gte": "ge", ">=": "ge", "lt": "lt", "<": "lt", "le": "le", "lte": "le", "<=": "le",
}
PORT_PROTOS = (6, 17, 132)


def _any(nodes: Sequence[Any]) -> Any:
    out = nodes[0]
    for n in nodes[1:]:
        out = Or(out, n)
    return out


def _all(nodes: Sequence[Any]) -> Any:
    out = nodes[0]
    for n in nodes[1:]:
        out = And(out, n)
    return out


# --- lexer ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\(|\)|&&|\|\||>=|<=|!=|==|[<>=!])|([^\s()!<>=&|]+))")


@dataclasses.dataclass(frozen=True)
class _Tok:
    text: str
    pos: int        # 1-based column
    word: bool


def _lex(text: str) -> list[_Tok]:
    toks, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        m = _TOKEN.match(text, i)
        if not m or m.end() == i:
            col = i + len(text[i:]) - len(text[i:].lstrip()) + 1
            raise FilterError(f"unexpected character {text[col - 1]!r}", col)
        sym, word = m.group(1), m.group(2)
        start = m.start(1) if sym else m.start(2)
        toks.append(_Tok(sym or word, start + 1, word is not None))
        i = m.end()
    return toks


# --- parser -----------------------------------------------------------------------------------

_PROTO_WORDS = {
    "tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58, "icmpv6": 58, "ipv6-icmp": 58, "igmp": 2,
    "gre": 47, "esp": 50, "ah": 51, "sctp": 132, "ospf": 89, "pim": 103, "vrrp": 112,
    "eigrp": 88, "arp": 0x0806, "rarp": 0x8035,
}
_FAMILY_WORDS = {"ip": (4, 6), "ipv4": (4,), "ip6": (6,), "ipv6": (6,)}
_DIRS = {"src": "s", "dst": "d"}
_TYPES = {"host", "net", "port", "portrange", "proto"}
_TCP_FLAGS = {"syn": "S", "fin": "F", "reset": "R", "rst": "R", "ack": "A", "push": "P",
              "urg": "U"}
_STATES = {"est": ("CON", "EST"), "con": ("CON", "EST"), "req": ("REQ",), "acc": ("ACC",),
           "int": ("INT",), "clo": ("CLO",)}
# Comparison types: name -> (total key or None, src key, dst key).
_METRICS = {
    "pkts": ("pkts", "spkts", "dpkts"), "bytes": ("bytes", "sbytes", "dbytes"),
    "appbytes": ("appbytes", "sappbytes", "dappbytes"), "ttl": (None, "sttl", "dttl"),
    "tos": (None, "stos", "dtos"), "vid": (None, "svlan", "dvlan"),
    "mid": (None, "smpls", "dmpls"), "retrans": (None, "sretrans", "dretrans"),
    "loss": (None, "sretrans", "dretrans"),
}
_KEYWORDS = (set(_PROTO_WORDS) | set(_FAMILY_WORDS) | set(_DIRS) | _TYPES | set(_TCP_FLAGS)
             | set(_STATES) | set(_METRICS) | {"and", "or", "not", "synack", "ecn", "timeout",
                                                 "man", "state", "cause", "srcid", "ether", "frag",
                                                 "alert", "sid", "gid"})


MAX_DEPTH = 100          # parentheses and nots: deeper filters are refused, not recursed into


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _lex(text)
        self.i = 0
        self.depth = 0                                   # parentheses and nots around the cursor
        self.last: Callable[[_Tok], Any] | None = None   # builds a primitive from a bare id

    # token helpers
    def peek(self, k: int = 0) -> _Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def next(self, what: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise FilterError(f"expected {what}, got end of filter", len(self.text) + 1)
        self.i += 1
        return tok

    def at(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text.lower() in words

    # grammar
    def parse(self) -> Any:
        if not self.toks:
            return None
        node = self.expr()
        tok = self.peek()
        if tok is not None:
            if tok.text == ")":
                raise FilterError("unbalanced ')'", tok.pos)
            raise FilterError(f"expected 'and' or 'or', got {tok.text!r}", tok.pos)
        return node

    def expr(self) -> Any:
        depth = self.depth
        node = self.unary(depth)
        while self.at("and", "&&", "or", "||"):
            op = self.next("an operator").text.lower()
            right = self.unary(depth)
            node = And(node, right) if op in ("and", "&&") else Or(node, right)
        return node

    def unary(self, depth: int = 0) -> Any:
        tok = self.peek()
        if tok is None:
            raise FilterError("expected a primitive, got end of filter", len(self.text) + 1)
        if depth > MAX_DEPTH:
            raise FilterError(f"filter nested more than {MAX_DEPTH} levels deep", tok.pos)
        if tok.text.lower() in ("not", "!"):
            self.i += 1
            return Not(self.unary(depth + 1))
        if tok.text == "(":
            self.i += 1
            self.depth = depth + 1
            node = self.expr()
            close = self.next("')'")
            if close.text != ")":
                raise FilterError(f"expected ')', got {close.text!r}", close.pos)
            self.depth = depth
            return node
        return self.primitive()

    def primitive(self) -> Any:
        tok = self.peek()
        if not tok.word:
            raise FilterError(f"expected a primitive, got {tok.text!r}", tok.pos)
        word = tok.text.lower()
        if word not in _KEYWORDS and word not in _fields.FIELDS:
            self.i += 1
            if self.last is not None:
                return self.last(tok)
            return self.host("sd", tok, None)
        if word == "ether":
            return self.ether()
        if word in ("alert", "sid", "gid"):
            return self.linked(word)
        if word in _PROTO_WORDS or word in _FAMILY_WORDS:
            self.i += 1
            proto = self.proto_node(word)
            if self.at(*_DIRS, *_TYPES):
                return self.qualified(proto)
            return proto
        return self.qualified(None)

    def proto_node(self, word: str) -> Any:
        if word in _FAMILY_WORDS:
            return _any([Family(v) for v in _FAMILY_WORDS[word]])
        return Compare("proto", "eq", _PROTO_WORDS[word])

    def direction(self) -> str:
        """Parse ``src``, ``dst``, ``src or dst``, ``src and dst``; default "sd" (either)."""
        if not self.at(*_DIRS):
            return "sd"
        first = _DIRS[self.next("src or dst").text.lower()]
        t1, t2 = self.peek(), self.peek(1)
        if (t1 and t2 and t1.text.lower() in ("or", "and") and t2.text.lower() in _DIRS
                and _DIRS[t2.text.lower()] != first):
            self.i += 2
            return "sd" if t1.text.lower() == "or" else "s&d"
        return first

    def qualified(self, proto: Any) -> Any:
        """The rest of a primitive after an optional protocol qualifier."""
        dir_tok = self.peek()
        d = self.direction()
        tok = self.next("a primitive")
        word = tok.text.lower()
        if word == "host":
            return self.remember(lambda t: self.host(d, t, proto), self.next("an address"))
        if word == "net":
            return self.remember(lambda t: self.net(d, t, proto), self.next("a network"))
        if word in ("port", "portrange"):
            return self.remember(lambda t: self.port(d, t, proto), self.next("a port number"))
        if word not in _KEYWORDS and word not in _fields.FIELDS:
            return self.remember(lambda t: self.host(d, t, proto), tok)
        return self.with_proto(proto, self.unqualified(d, tok, dir_tok))

    def unqualified(self, d: str, tok: _Tok, dir_tok: _Tok) -> Any:
        """Primitives that are not host/net/port: comparisons, TCP flags, states, keywords."""
        word = tok.text.lower()
        if word == "proto":
            return self.proto_number(self.next("a protocol"))
        nxt = self.peek()
        compares = nxt is not None and nxt.text.lower() in _OP_WORDS
        if word in _METRICS or (word in _fields.FIELDS and _fields.FIELDS[word].stored
                                and _fields.FIELDS[word].key in _fields.NUMERIC_KEYS
                                and (compares or word not in _KEYWORDS)):
            return self.comparison(d, tok, dir_tok)
        if word in _TCP_FLAGS:
            return self.sides(d, lambda k: HasFlag(k, _TCP_FLAGS[word]), "sflags", "dflags")
        if word == "synack":
            return And(HasFlag("dflags", "S"), HasFlag("dflags", "A"))
        if word == "ecn":
            return self.sides(d, lambda k: Or(HasFlag(k, "E"), HasFlag(k, "C")), "sflags", "dflags")
        if word == "frag":
            return Or(HasFlag("flgs", "F", 2), HasFlag("flgs", "f", 2))
        if word in _STATES or word in ("timeout", "man", "state", "cause", "srcid"):
            if d != "sd":
                raise FilterError(f"{word!r} takes no src/dst qualifier", dir_tok.pos)
            return self.keyword(word)
        raise FilterError(f"unexpected {tok.text!r}", tok.pos)

    def keyword(self, word: str) -> Any:
        """States, ``timeout``, ``man`` and the ``state``/``cause``/``srcid`` tests."""
        if word in _STATES:
            states = _STATES[word]
            return OneOf("state", states) if len(states) > 1 else Compare("state", "eq", states[0])
        if word == "timeout":
            return Or(Compare("cause", "eq", "Timeout"), Compare("state", "eq", "TIM"))
        if word == "man":
            return Const(False)
        if word == "state":
            return Compare("state", "eq", self.next("a state name").text.upper())
        if word == "cause":
            return Compare("cause", "eq", self.next("a cause").text.capitalize())
        return Compare("srcid", "eq", self.next("a source id").text)

    def remember(self, build: Callable[[_Tok], Any], tok: _Tok) -> Any:
        """Build a host/net/port primitive and keep the builder for later bare ids."""
        self.last = build
        return build(tok)

    @staticmethod
    def sides(d: str, make: Callable[[str], Any], skey: str, dkey: str) -> Any:
        if d == "s":
            return make(skey)
        if d == "d":
            return make(dkey)
        if d == "s&d":
            return And(make(skey), make(dkey))
        return Or(make(skey), make(dkey))

    def with_proto(self, proto: Any, node: Any) -> Any:
        return node if proto is None else And(proto, node)

    def host(self, d: str, tok: _Tok, proto: Any) -> Any:
        addr = _canonical_address(tok)
        return self.with_proto(proto, self.sides(d, lambda k: Compare(k, "eq", addr),
                                                 "saddr", "daddr"))

    def net(self, d: str, tok: _Tok, proto: Any) -> Any:
        text = tok.text
        if self.at("mask"):
            self.i += 1
            mask = self.next("a netmask")
            text = f"{text}/{mask.text}"
        net = _network(text, tok)
        return self.with_proto(proto, self.sides(d, lambda k: InNet(k, net), "saddr", "daddr"))

    def port(self, d: str, tok: _Tok, proto: Any) -> Any:
        lo, hi = _port_range(tok)

        def one(key: str) -> Any:
            if lo == hi:
                return Compare(key, "eq", lo)
            return And(Compare(key, "ge", lo), Compare(key, "le", hi))
        ports = self.sides(d, one, "sport", "dport")
        return And(proto or OneOf("proto", PORT_PROTOS), ports)

    def proto_number(self, tok: _Tok) -> Any:
        word = tok.text.lower()
        if word in _PROTO_WORDS:
            return Compare("proto", "eq", _PROTO_WORDS[word])
        if word in _fields.PROTO_NUMBERS:
            return Compare("proto", "eq", _fields.PROTO_NUMBERS[word])
        value = _number(tok.text)
        if not isinstance(value, int) or value < 0:
            raise FilterError(f"expected a protocol name or number, got {tok.text!r}", tok.pos)
        return Compare("proto", "eq", value)

    def comparison(self, d: str, tok: _Tok, dir_tok: _Tok | None) -> Any:
        word = tok.text.lower()
        if word in _METRICS:
            total, skey, dkey = _METRICS[word]
            keys = {"s": [skey], "d": [dkey], "s&d": [skey, dkey]}.get(d)
            if keys is None:
                keys = [total] if total else [skey, dkey]
                join = _any
            else:
                join = _all
        else:
            if d != "sd":
                raise FilterError(f"{word!r} takes no src/dst qualifier", dir_tok.pos)
            keys, join = [_fields.FIELDS[word].key], _any
        op = "eq"
        nxt = self.peek()
        if nxt is not None and nxt.text.lower() in _OP_WORDS:
            op = _OP_WORDS[nxt.text.lower()]
            self.i += 1
        elif word in ("retrans", "loss") and not (nxt and nxt.word and _number(nxt.text) is not None):
            return join([Compare(k, "gt", 0) for k in keys])
        num_tok = self.next("a number")
        value = _number(num_tok.text)
        if value is None:
            raise FilterError(f"expected a number, got {num_tok.text!r}", num_tok.pos)
        return join([Compare(k, op, value) for k in keys])

    def linked(self, word: str) -> Any:
        self.i += 1
        if word == "alert":
            return Linked()
        tok = self.next(f"a {word} number")
        value = _number(tok.text)
        if not isinstance(value, int) or not 0 <= value < 1 << 32:
            raise FilterError(f"expected a {word} number, got {tok.text!r}", tok.pos)
        return Linked(**{word: value})

    def ether(self) -> Any:
        self.i += 1
        if self.at("proto"):
            self.i += 1
            return self.proto_number(self.next("a protocol"))
        d = self.direction()
        if self.at("host"):
            self.i += 1
        tok = self.next("a MAC address")
        build = lambda t: self.sides(d, lambda k: Compare(k, "eq", _mac(t)), "smac", "dmac")
        return self.remember(build, tok)


def _number(text: str) -> int | float | None:
    """The number a token spells (SQLite's signed 64-bit range), or None."""
    for base in (10, 0):
        try:
            value = int(text, base)
        except ValueError:
            continue
        return value if -(1 << 63) <= value < (1 << 63) else None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _canonical_address(tok: _Tok) -> str:
    text = tok.text
    if _fields.is_mac(text.lower()):
        return text.lower()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        what = "an address" if tok.text.lower() not in _KEYWORDS else "an address, not a keyword"
        raise FilterError(f"expected {what}, got {text!r}", tok.pos) from None


def _mac(tok: _Tok) -> str:
    text = tok.text.lower().replace("-", ":")
    parts = text.split(":")
    if len(parts) == 6 and all(1 <= len(p) <= 2 and all(c in "0123456789abcdef" for c in p)
                               for p in parts):
        return ":".join(p.zfill(2) for p in parts)
    raise FilterError(f"expected a MAC address, got {tok.text!r}", tok.pos)


def _network(text: str, tok: _Tok) -> str:
    """Canonical ``addr/len`` for CIDR, ``addr/mask``, or Argus's short ``10.1`` form."""
    addr, _, plen = text.partition("/")
    if ":" not in addr and "/" not in text and addr.replace(".", "").isdigit():
        parts = addr.rstrip(".").split(".")
        if 1 <= len(parts) < 4:
            addr, plen = ".".join(parts + ["0"] * (4 - len(parts))), str(8 * len(parts))
    try:
        return str(ipaddress.ip_network(f"{addr}/{plen}" if plen else addr, strict=False))
    except ValueError:
        raise FilterError(f"expected a network such as 10.0.0.0/8, got {text!r}", tok.pos) from None


def _port_range(tok: _Tok) -> tuple[int, int]:
    text = tok.text
    lo, sep, hi = text.partition("-")
    if sep and lo.isdigit() and hi.isdigit():
        a, b = int(lo), int(hi)
        if a <= b <= 65535:
            return a, b
        raise FilterError(f"bad port range {text!r}", tok.pos)
    if text.isdigit():
        if int(text) > 65535:
            raise FilterError(f"port out of range: {text!r}", tok.pos)
        return int(text), int(text)
    if text.lower() not in _KEYWORDS:
        for proto in ("tcp", "udp"):
            try:
                port = socket.getservbyname(text, proto)
                return port, port
            except OSError:
                continue
    raise FilterError(f"expected a port number, got {text!r}", tok.pos)


def parse(text: str | Sequence[str]) -> Any:
    """Parse a filter (a string, or argv words joined with spaces) into an AST; None if empty.

    :raises FilterError: with the 1-based column of the offending token.
    """
    if not isinstance(text, str):
        text = " ".join(text)
    for pos, ch in enumerate(text, 1):
        # Control characters and undecodable argv bytes (lone surrogates) are never part of a
        # filter; refusing them here keeps them away from getservbyname and SQLite.
        if (ch < " " and ch not in "\t\n") or "\ud800" <= ch <= "\udfff" or ch == "\x7f":
            raise FilterError(f"character {ch!r} is not allowed in a filter", pos)
    return _Parser(text).parse()


# --- compilation: Python ----------------------------------------------------------------------

@functools.lru_cache(maxsize=1 << 16)
def _addr_int(addr: str | None) -> tuple[int, int] | None:
    """(IP version, integer value) of an address string, or None for MACs and junk."""
    if not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return ip.version, int(ip)


@functools.lru_cache(maxsize=4096)
def _net_parts(net: str) -> tuple[int, int, int]:
    n = ipaddress.ip_network(net, strict=False)
    return n.version, int(n.network_address), int(n.netmask)


def in_net(addr: str | None, net: str) -> bool:
    """True if ``addr`` (text) lies in ``net`` (``addr/len``); False for MACs and missing values."""
    a = _addr_int(addr)
    if a is None:
        return False
    version, base, mask = _net_parts(net)
    return a[0] == version and (a[1] & mask) == base


def _operands(node: Any) -> list[Any]:
    """The operands of a chain of one operator (a or b or c ...), without recursion: a list of 300
    hosts must not nest 300 levels deep in the compiled Python or SQL."""
    kind, out, stack = type(node), [], [node]
    while stack:
        n = stack.pop()
        if type(n) is kind:
            stack += [n.right, n.left]
        else:
            out.append(n)
    return out


def _py(node: Any, consts: list[Any]) -> str:
    def const(v: Any) -> str:
        consts.append(v)
        return f"_c{len(consts) - 1}"

    if isinstance(node, (And, Or)):
        word = " and " if isinstance(node, And) else " or "
        return "(" + word.join(_py(n, consts) for n in _operands(node)) + ")"
    if isinstance(node, Not):
        return f"(not {_py(node.expr, consts)})"
    if isinstance(node, Const):
        return "True" if node.value else "False"
    if isinstance(node, Compare):
        col = f"r[{node.key!r}]"
        return f"({col} is not None and {col} {OPS[node.op]} {const(node.value)})"
    if isinstance(node, OneOf):
        col = f"r[{node.key!r}]"
        return f"({col} is not None and {col} in {const(frozenset(node.values))})"
    if isinstance(node, InNet):
        return f"_in_net(r[{node.key!r}], {const(node.net)})"
    if isinstance(node, Family):
        return (f"(r['proto'] is not None and r['proto'] <= 255"
                f" and _family(r['saddr']) == {int(node.version)})")
    if isinstance(node, HasFlag):
        return f"({const(node.letter)} in (r[{node.key!r}] or '')[{int(node.start)}:])"
    if isinstance(node, Linked):
        return f"_linked(r, {const(node.sid)}, {const(node.gid)})"
    raise TypeError(f"not a filter node: {node!r}")


def _check_keys(node: Any) -> None:
    """Refuse any column name that is not in the field whitelist (defence for SQL)."""
    if isinstance(node, (And, Or)):
        for n in _operands(node):
            _check_keys(n)
    elif isinstance(node, Not):
        _check_keys(node.expr)
    elif isinstance(node, (Compare, OneOf, InNet, HasFlag)) and node.key not in _fields.WHITELIST:
        raise ValueError(f"column {node.key!r} is not in the field whitelist")


def _no_links(r: dict, sid: int | None, gid: int | None) -> bool:
    return False


def compile_predicate(ast: Any, linked: Callable[[dict, int | None, int | None], bool] = _no_links
                      ) -> Callable[[dict], bool]:
    """Compile an AST into a fast ``record -> bool`` (None compiles to "always true").

    The AST becomes one Python expression; constants are bound by name, never pasted as text.
    ``linked(r, sid, gid)`` decides ``alert``/``sid N``/``gid N`` (default: false: records read
    from captures and streams have no alert store; archives decide them in SQL).
    """
    if ast is None:
        return lambda r: True
    _check_keys(ast)
    consts: list[Any] = []
    body = _py(ast, consts)
    env = {f"_c{i}": v for i, v in enumerate(consts)}
    env.update(__builtins__={"bool": bool}, _in_net=in_net, _family=_fields.address_family,
               _linked=linked)
    return eval(f"lambda r: bool({body})", env)  # noqa: S307 - text built from the AST only


# --- compilation: SQL -------------------------------------------------------------------------

def _sql(node: Any, params: list[Any]) -> str:
    if isinstance(node, (And, Or)):
        word = " AND " if isinstance(node, And) else " OR "
        return "(" + word.join(_sql(n, params) for n in _operands(node)) + ")"
    if isinstance(node, Not):
        return f"(NOT {_sql(node.expr, params)})"
    if isinstance(node, Const):
        return "1" if node.value else "0"
    if isinstance(node, Compare):
        params.append(node.value)
        op = {"eq": "=", "ne": "!="}.get(node.op, OPS[node.op])
        return f"({node.key} IS NOT NULL AND {node.key} {op} ?)"
    if isinstance(node, OneOf):
        params.extend(node.values)
        marks = ", ".join("?" * len(node.values))
        return f"({node.key} IS NOT NULL AND {node.key} IN ({marks}))"
    if isinstance(node, InNet):
        params.append(node.net)
        return f"(ft_in_net({node.key}, ?) = 1)"
    if isinstance(node, Family):
        return f"(proto IS NOT NULL AND proto <= 255 AND ft_family(saddr) = {int(node.version)})"
    if isinstance(node, HasFlag):
        params.append(node.letter)
        return f"(instr(substr(IFNULL({node.key}, ''), {int(node.start) + 1}), ?) > 0)"
    if isinstance(node, Linked):
        test = [f"{k} = ?" for k in ("sid", "gid") if getattr(node, k) is not None]
        params.extend(v for v in (node.sid, node.gid) if v is not None)
        return f"(rid IN (SELECT rid FROM temp.ft_linked{' WHERE ' + ' AND '.join(test) if test else ''}))"
    raise TypeError(f"not a filter node: {node!r}")


def compile_sql(ast: Any) -> tuple[str, list[Any]]:
    """Compile an AST into ``(where_sql, params)`` for a table whose columns are the record keys.

    ``None`` compiles to ``("1", [])``. Needs ``register_sql_functions(conn)`` on the connection.
    Every column name comes from ``fields.WHITELIST``; every value is a parameter.
    """
    if ast is None:
        return "1", []
    _check_keys(ast)
    params: list[Any] = []
    return _sql(ast, params), params


def _sql_in_net(addr: str | None, net: str) -> int:
    return 1 if in_net(addr, net) else 0


def register_sql_functions(conn: sqlite3.Connection) -> None:
    """Install ``ft_in_net(addr, net)`` and ``ft_family(addr)`` on a SQLite connection."""
    conn.create_function("ft_in_net", 2, _sql_in_net, deterministic=True)
    conn.create_function("ft_family", 1, _fields.address_family, deterministic=True)


# --- time ranges (-t) -------------------------------------------------------------------------

_UNITS = {"y": "years", "M": "months", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_REL = re.compile(r"(\d+)([yMdhms])")


def _shift(t: _dt.datetime, n: int, unit: str) -> _dt.datetime:
    if unit in ("years", "months"):
        months = t.month - 1 + n * (12 if unit == "years" else 1)
        year, month = t.year + months // 12, months % 12 + 1
        day = min(t.day, calendar.monthrange(year, month)[1])
        return t.replace(year=year, month=month, day=day)
    return t + _dt.timedelta(**{unit: n})


def _duration(text: str, pos: int, base: _dt.datetime, sign: int) -> _dt.datetime:
    if not text or _REL.sub("", text):
        raise FilterError(f"expected a duration such as 10m or 2h5m, got {text!r}", pos)
    for n, u in _REL.findall(text):
        base = _shift(base, sign * int(n), _UNITS[u])
    return base


_SPEC = re.compile(
    r"^(?:(?:(?P<y>\d{4})(?:/(?P<mo>\d{1,2})(?:/(?P<d>\d{1,2}))?)?"
    r"|(?P<mo2>\d{1,2})/(?P<d2>\d{1,2})|(?P<d3>\d{1,2})(?=\.))(?:\.|$))?"
    r"(?:(?P<H>\d{1,2})(?::(?P<M>\d{1,2})(?::(?P<S>\d{1,2}(?:\.\d+)?))?)?)?$")


def _spec(text: str, pos: int, today: _dt.datetime) -> tuple[_dt.datetime, _dt.datetime, bool]:
    """(start, end of its granularity, has a time of day) for one absolute time specification."""
    if re.fullmatch(r"\d{9,}(\.\d+)?", text):
        start = _dt.datetime.fromtimestamp(float(text))
        return start, start + _dt.timedelta(seconds=1), True
    m = _SPEC.match(text)
    if not text or not m:
        raise FilterError(f"expected a time such as 2024/01/31.10:00:00, got {text!r}", pos)
    g = m.groupdict()
    year = int(g["y"]) if g["y"] else today.year
    month = int(g["mo"] or g["mo2"] or 0) or (today.month if not g["y"] else 1)
    day = int(g["d"] or g["d2"] or g["d3"] or 0) or (today.day if not (g["y"] or g["mo2"]) else 1)
    if g["y"] and not g["mo"]:
        month, day, unit = 1, 1, "years"
    elif g["y"] and not g["d"]:
        day, unit = 1, "months"
    else:
        unit = "days"
    hour = minute = 0
    second = 0.0
    if g["H"] is not None:
        hour, unit = int(g["H"]), "hours"
        if g["M"] is not None:
            minute, unit = int(g["M"]), "minutes"
        if g["S"] is not None:
            second, unit = float(g["S"]), "seconds"
    try:
        start = _dt.datetime(year, month, day, hour, minute, int(second),
                             round((second % 1) * 1_000_000))
    except ValueError as e:
        raise FilterError(f"bad time {text!r}: {e}", pos) from None
    return start, _shift(start, 1, unit), g["H"] is not None


def parse_time_range(text: str, now: float | None = None) -> Any:
    """See ``_time_range``; a range beyond the calendar (year 10000, ``-99999999y``) is a
    ``FilterError`` too, not the datetime module's OverflowError.
    """
    try:
        return _time_range(text, now)
    except FilterError:
        raise
    except (OverflowError, ValueError, OSError) as e:
        raise FilterError(f"a time out of range ({e})", 1) from None


def _time_range(text: str, now: float | None = None) -> Any:
    """Parse an Argus ``-t`` range into a filter AST over ``stime``/``ltime`` (local time).

    Forms: ``2024/01/01.10:00:00-2024/01/01.11:00:00``, ``2024/01/01``, ``2024/01``, ``2024``,
    ``10:00-11:30`` (today), ``1700000000-1700003600`` (epoch seconds), ``START+1h``, ``-10m``
    (the last ten minutes) and ``-2h+30m``. A prefix ``i`` (default: the record intersects the
    range), ``c`` (the record lies within it) or ``n`` (the record spans it), optionally preceded
    by ``x`` (negate), chooses the comparison, as in ra(1). A range end that has no time of day
    covers the whole period it names (``2011/08-2011/10`` ends on 1 November).

    :raises FilterError: with the column of the bad part.
    """
    m = re.match(r"x?[inc]?", text)
    prefix, body, off = m.group(0), text[m.end():], m.end() + 1
    now_dt = _dt.datetime.fromtimestamp(time.time() if now is None else now)
    if body.startswith("-"):
        dur, plus, rest = body[1:].partition("+")
        start = _duration(dur, off + 1, now_dt, -1)
        end = _duration(rest, off + 2 + len(dur), start, 1) if plus else now_dt
    else:
        first, plus, rest = body.partition("+")
        if plus:
            start, _, _ = _spec(first, off, now_dt)
            end = _duration(rest, off + len(first) + 1, start, 1)
        else:
            first, dash, second = body.partition("-")
            start, end, _ = _spec(first, off, now_dt)
            if dash:
                b_start, b_end, timed = _spec(second, off + len(first) + 1,
                                              start if "/" not in second else now_dt)
                end = b_start if timed else b_end
    if end <= start:
        raise FilterError("the time range ends before it starts", 1)
    lo, hi = start.timestamp(), end.timestamp()
    mode = prefix.lstrip("x") or "i"
    if mode == "i":
        node = And(Compare("stime", "lt", hi), Compare("ltime", "ge", lo))
    elif mode == "c":
        node = And(Compare("stime", "ge", lo), Compare("ltime", "lt", hi))
    else:
        node = And(Compare("stime", "le", lo), Compare("ltime", "ge", hi))
    return Not(node) if prefix.startswith("x") else node
