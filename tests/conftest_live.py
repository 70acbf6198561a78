"""Fixtures and helpers for the live tests: a bridge in network namespaces, the real recorder on it,
real traffic between two hosts, and independent counts of what crossed the wire.

The hosts' sockets are made inside the namespaces by this process (``socket_in``): a socket stays
in the namespace it was created in, so one test can play both hosts and know exactly what each
socket sent. The independent packet count is an AF_PACKET capture on h1's eth0 (``Sniffer``),
itself checked against the interface's own counters (``link_counters``).

Imported by tests/test_live.py (and tests/test_systemd_notify.py); pytest finds the fixtures there.
These tests need root and namespaces; without them they fail, never skip (DESIGN.md, Tests).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance import archive
from appliance.netlab import Lab, LabError

REPO = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
TCP_PORT = 8080


def require_root() -> None:
    """Fail (not skip) when the live tier cannot run: CI is root and must run it."""
    if os.geteuid() != 0:
        pytest.fail("live tests need root (network namespaces, a bridge, packet capture); CI runs as root")


# -- the lab --------------------------------------------------------------------------------------

def quiet(lab: Lab) -> None:
    """Stop background chatter on the hosts so counters change only with the test's traffic:
    no IPv6 router solicitations or link-local addresses (DAD, MLD), static neighbours (no ARP/ND)."""
    macs = {h: lab.run(getattr(lab, h), "cat", "/sys/class/net/eth0/address").stdout.strip()
            for h in ("h1", "h2")}
    for host, peer in (("h1", "h2"), ("h2", "h1")):
        ns = getattr(lab, host)
        lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0",
                "net.ipv6.conf.eth0.dad_transmits=0")
        lab.run(ns, "ip", "addr", "flush", "dev", "eth0", "scope", "link")
        for addr in (lab.addr[peer], lab.addr6[peer]):
            lab.run(ns, "ip", "neigh", "replace", addr, "lladdr", macs[peer], "dev", "eth0",
                    "nud", "permanent")


def forwarding(lab: Lab) -> bool:
    """True once both bridge ports forward. The kernel enables a port only when its carrier event
    has gone through linkwatch, up to a second after `ip link set up`: frames sent before are lost."""
    states = lab.run(lab.tap, "cat", *(f"/sys/class/net/{p}/brport/state" for p in lab.ports)).stdout
    return states.split() == ["3"] * len(lab.ports)          # BR_STATE_FORWARDING


@pytest.fixture
def bridge() -> Iterator[Lab]:
    """Namespaces h1, h2 and tap, veth links, br0 (p1, p2) in tap, forwarding; deleted afterwards."""
    require_root()
    try:
        with Lab(prefix=f"ftl{os.getpid()}") as lab:
            quiet(lab)
            wait_for(lambda: forwarding(lab), 5, "the bridge ports to forward")
            yield lab
    except LabError as exc:
        pytest.fail(f"cannot build the namespace lab: {exc}")


@pytest.fixture
def lab(bridge: Lab) -> Lab:
    """The same lab as ``bridge``, under the name the traffic helpers use."""
    return bridge


# -- sockets inside namespaces --------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Switch this thread into a named network namespace for the duration of the block."""
    with open("/proc/self/ns/net") as home, open(f"/run/netns/{name}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def socket_in(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created in namespace ns (it stays there whatever thread uses it)."""
    with netns(ns):
        s = socket.socket(family, kind, proto)
    s.settimeout(10)
    return s


# -- independent counts ---------------------------------------------------------------------------

FlowKey = tuple[int, str, int, str, int]          # proto, saddr, sport, daddr, dport (as sent)


def flow_key(frame: bytes) -> FlowKey | None:
    """(proto, src, sport, dst, dport) of an IPv4/IPv6 TCP/UDP/ICMP frame (802.1Q tags skipped)."""
    off, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
    while ethertype in (0x8100, 0x88A8):
        ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if ethertype == 0x0800:
        ihl, proto = (frame[off] & 15) * 4, frame[off + 9]
        src, dst = (socket.inet_ntop(socket.AF_INET, frame[off + i:off + i + 4]) for i in (12, 16))
        l4 = off + ihl
    elif ethertype == 0x86DD:
        proto = frame[off + 6]
        src, dst = (socket.inet_ntop(socket.AF_INET6, frame[off + i:off + i + 16]) for i in (8, 24))
        l4 = off + 40
    else:
        return None
    if proto in (6, 17):
        sport, dport = struct.unpack_from("!HH", frame, l4)
    else:
        sport, dport = frame[l4] if len(frame) > l4 else 0, 0
    return proto, src, sport, dst, dport


@dataclass
class Count:
    """Frames and wire bytes of one flow, per direction (s = as the key says, d = reverse)."""

    spkts: int = 0
    dpkts: int = 0
    sbytes: int = 0
    dbytes: int = 0


class Sniffer:
    """Every frame h1's eth0 sends or receives, from an AF_PACKET socket in h1's namespace."""

    def __init__(self, lab: Lab, host: str = "h1"):
        self.lab, self.ns = lab, getattr(lab, host)
        self.sock = socket_in(self.ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("eth0", ETH_P_ALL))
        self.sock.setblocking(False)
        self.frames: list[tuple[bool, bytes, int]] = []      # (outgoing, first bytes, wire length)
        self.start = link_counters(lab, self.ns)

    def drain(self) -> Sniffer:
        """Collect what arrived so far; returns self."""
        buf = bytearray(1 << 17)
        while True:
            try:
                n, addr = self.sock.recvfrom_into(buf, len(buf), socket.MSG_TRUNC)
            except BlockingIOError:
                return self
            self.frames.append((addr[2] == PACKET_OUTGOING, bytes(buf[:128]), n))

    def close(self) -> dict[str, int]:
        """Stop; returns the interface counters' change while the sniffer ran. A frame can be in
        the counters a moment before it is in the socket's queue: drain until both agree (2 s)."""
        deadline = time.monotonic() + 2.0
        while True:
            end = link_counters(self.lab, self.ns)
            self.drain()
            delta = {k: end[k] - self.start[k] for k in end}
            out = sum(1 for f in self.frames if f[0])
            if ((len(self.frames) - out, out) == (delta["rx_packets"], delta["tx_packets"])
                    or time.monotonic() > deadline):
                break
            time.sleep(0.05)
        self.sock.close()
        return delta

    def count(self, key: FlowKey, reverse: FlowKey | None = None) -> Count:
        """Frames of one flow: s* in the direction of key, d* in the reverse direction (for ICMP,
        whose request and reply keys are not mirror images, give the reply's key)."""
        proto, a, ap, b, bp = key
        reverse = reverse or (proto, b, bp, a, ap)
        c = Count()
        for _out, data, n in self.frames:
            k = flow_key(data)
            if k == key:
                c.spkts, c.sbytes = c.spkts + 1, c.sbytes + n
            elif k == reverse:
                c.dpkts, c.dbytes = c.dpkts + 1, c.dbytes + n
        return c


def link_counters(lab: Lab, ns: str, dev: str = "eth0") -> dict[str, int]:
    """An interface's own rx/tx packet and byte counters (``ip -s -j link``)."""
    stats = json.loads(lab.run(ns, "ip", "-s", "-j", "link", "show", dev).stdout)[0]["stats64"]
    return {f"{d}_{k}": stats[d][k] for d in ("rx", "tx") for k in ("packets", "bytes")}


def settle(lab: Lab, quiet_for: float = 0.2) -> None:
    """Wait until neither host's eth0 counters move for quiet_for seconds (delayed ACKs are out)."""
    state: dict[str, Any] = {"last": None, "since": 0.0}

    def steady() -> bool:
        now = (link_counters(lab, lab.h1), link_counters(lab, lab.h2))
        if now != state["last"]:
            state.update(last=now, since=time.monotonic())
        return time.monotonic() - state["since"] >= quiet_for

    wait_for(steady, 5, "the hosts' links to go quiet")


@contextlib.contextmanager
def sniffing(lab: Lab) -> Iterator[Sniffer]:
    """Capture h1's eth0 for the block; afterwards, check the capture against the interface
    counters (so it is a complete, independent count) and leave its frames in the sniffer."""
    sniffer = Sniffer(lab)
    try:
        yield sniffer
    finally:
        delta = sniffer.close()
    out = [f for f in sniffer.frames if f[0]]
    assert (len(sniffer.frames) - len(out), len(out)) == (delta["rx_packets"], delta["tx_packets"]), \
        f"the capture on h1's eth0 disagrees with its counters {delta}"
    assert sum(f[2] for f in sniffer.frames) == delta["rx_bytes"] + delta["tx_bytes"]


# -- the recorder ---------------------------------------------------------------------------------

def toml(config: dict[str, dict[str, Any]]) -> str:
    """A TOML text for a flat two-level config dict (strings, numbers, booleans, lists)."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll check() until it returns something true; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class RecorderProcess:
    """`flowtap record` running in the tap namespace on given interfaces, with its own config,
    data and runtime directories. Start with :meth:`start`; stop with :meth:`stop` or :meth:`kill`."""

    lab: Lab
    workdir: Path
    interfaces: tuple[str, ...] = ("br0",)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "flowtap.toml"
        self.data_dir = self.workdir / "data"
        self.run_dir = self.workdir / "run"
        self.log_path = self.workdir / "recorder.log"
        base = {"sensor": {"id": "live-test"},
                "flows": {"timeout_closed": 1},
                # min_free_percent 0: retention must not delete archives on a full CI disk.
                "archive": {"commit_interval": 0.1, "min_free_percent": 0}}
        for section, values in self.config.items():
            base[section] = {**base.get(section, {}), **values}
        self.config = base
        self.write_config()

    def write_config(self, **sections: dict[str, Any]) -> None:
        """(Re)write the config file, updating the given sections."""
        for section, values in sections.items():
            self.config[section] = {**self.config.get(section, {}), **values}
        self.config_path.write_text(toml(self.config))

    def start(self) -> RecorderProcess:
        """Start and wait until it records (status.json written by this process)."""
        argv = [sys.executable, "-m", "appliance.cli", "record", "-c", str(self.config_path), "-q",
                "-d", str(self.data_dir), "--runtime-dir", str(self.run_dir)]
        for iface in self.interfaces:
            argv += ["-i", iface]
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.popen(self.lab.tap, *argv, cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
        wait_for(lambda: self.exited() or self.status().get("pid") == self.proc.pid, 10,
                 f"the recorder on {self.interfaces} to start")
        assert not self.exited(), f"the recorder exited at start:\n{self.log()}"
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        """The last status.json, or {} before the first one."""
        try:
            return json.loads((self.run_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.exited():
            return self.proc.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the recorder did not stop within {timeout} s of SIGTERM:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no chance to close anything."""
        self.proc.kill()
        self.proc.wait()

    def archives(self) -> list[Path]:
        return archive.list_archives(self.data_dir / "archive")

    def records(self) -> list[dict[str, Any]]:
        """Every flow record in every archive so far (the open one included)."""
        out = []
        for path in self.archives():
            try:
                conn = archive.open_readonly(path)
            except (archive.ArchiveError, sqlite3.Error):
                continue                       # being created right now
            try:
                conn.row_factory = sqlite3.Row
                out += [dict(r) for r in conn.execute("SELECT * FROM flows ORDER BY seq")]
            finally:
                conn.close()
        return out

    def wait_record(self, match: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 8) -> dict[str, Any]:
        """The first archived record that matches (polls the archive)."""
        return wait_for(lambda: next((r for r in self.records() if match(r)), None), timeout,
                        f"a record of {what} in the archive")


@pytest.fixture
def recorder(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., RecorderProcess]]:
    """Factory: ``recorder(interfaces=("br0",), config={...})`` starts a recorder; every one
    still running at the end of the test is stopped."""
    started: list[RecorderProcess] = []

    def start(interfaces: tuple[str, ...] = ("br0",), config: dict | None = None,
              name: str | None = None, env: dict[str, str] | None = None) -> RecorderProcess:
        rec = RecorderProcess(lab, tmp_path / (name or f"rec{len(started)}"), tuple(interfaces),
                              config or {}, env)
        started.append(rec)
        return rec.start()

    yield start
    for rec in started:
        if rec.proc is not None and rec.proc.poll() is None:
            rec.proc.kill()
            rec.proc.wait()


# -- traffic --------------------------------------------------------------------------------------

def endpoint(lab: Lab, host: str, family: int) -> str:
    return lab.addr[host] if family == socket.AF_INET else lab.addr6[host]


@dataclass
class TcpSession:
    """One TCP connection from `client` to `server` with known payload sizes each way."""

    key: FlowKey
    client: socket.socket
    server: socket.socket

    def close(self) -> None:
        for s in (self.client, self.server):
            s.close()


def _recv_exactly(s: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        chunk = s.recv(min(1 << 16, n - got))
        if not chunk:
            raise AssertionError(f"connection closed after {got} of {n} bytes")
        got += len(chunk)
    return got


def _send(s: socket.socket, n: int, pace: float) -> None:
    chunk = b"c" * (1 << 16 if pace else max(n, 1))
    while n > 0:
        s.sendall(chunk[:n])
        n -= min(n, len(chunk))
        time.sleep(pace if n else 0)


def _linger0(s: socket.socket) -> None:
    """close() will send RST instead of FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def tcp_session(lab: Lab, nsend: int, nrecv: int, close: str = "fin", family: int = socket.AF_INET,
                client: str = "h1", server: str = "h2", port: int = TCP_PORT,
                pace: float = 0.0) -> TcpSession:
    """Connect client → server, send nsend bytes, receive nrecv bytes, then end the session:
    ``fin`` (both close normally), ``rst`` (the client aborts), ``rst-server`` (the server aborts)
    or ``open`` (left established; the caller closes the sockets later). With pace, the client
    sends 64 KiB at a time with that many seconds between chunks (a transfer that lasts)."""
    srv = socket_in(getattr(lab, server), family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((endpoint(lab, server, family), port))
    srv.listen(1)
    cli = socket_in(getattr(lab, client), family, socket.SOCK_STREAM)
    done = threading.Event()
    result: dict[str, Any] = {}

    def serve() -> None:                     # the server side, concurrently with the client
        try:
            conn, _ = srv.accept()
            conn.settimeout(10)
            result["conn"] = conn
            result["got"] = _recv_exactly(conn, nsend)
            conn.sendall(b"s" * nrecv)
            if close == "fin":
                result["eof"] = conn.recv(1) == b""
                conn.close()
            elif close == "rst-server":
                done.wait(10)                # the client has read everything
                _linger0(conn)
                conn.close()
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        cli.connect((endpoint(lab, server, family), port))
        _send(cli, nsend, pace)
        _recv_exactly(cli, nrecv)
        done.set()
        if close == "fin":
            cli.shutdown(socket.SHUT_WR)
            assert cli.recv(1) == b""
        elif close == "rst":
            _linger0(cli)
        elif close == "rst-server":
            with contextlib.suppress(ConnectionResetError):
                assert cli.recv(1) == b""
    finally:
        done.set()
        thread.join(15)
        srv.close()
    assert "error" not in result, result.get("error")
    assert result["got"] == nsend
    sport = cli.getsockname()[1]
    key = (6, endpoint(lab, client, family), sport, endpoint(lab, server, family), port)
    session = TcpSession(key, cli, result["conn"])
    if close != "open":
        session.close()
    return session


def udp_exchange(lab: Lab, request: bytes, response: bytes, family: int = socket.AF_INET,
                 sport: int = 0, dport: int = 5353) -> FlowKey:
    """One datagram h1 → h2 and one answer back; returns the flow key (h1's side first)."""
    srv = socket_in(lab.h2, family, socket.SOCK_DGRAM)
    cli = socket_in(lab.h1, family, socket.SOCK_DGRAM)
    try:
        srv.bind((endpoint(lab, "h2", family), dport))
        cli.bind((endpoint(lab, "h1", family), sport))
        cli.sendto(request, (endpoint(lab, "h2", family), dport))
        data, peer = srv.recvfrom(65536)
        assert data == request
        srv.sendto(response, peer)
        assert cli.recvfrom(65536)[0] == response
        return 17, endpoint(lab, "h1", family), cli.getsockname()[1], endpoint(lab, "h2", family), dport
    finally:
        cli.close()
        srv.close()


def send_udp_burst(lab: Lab, count: int, size: int, port: int = 9999) -> None:
    """count datagrams of size bytes h1 → h2 as fast as the lab forwards them (a short pause every
    100 keeps the veth backlog, 1000 packets, from overflowing)."""
    with contextlib.closing(socket_in(lab.h1, socket.AF_INET, socket.SOCK_DGRAM)) as s:
        for i in range(count):
            s.sendto(b"b" * size, (lab.addr["h2"], port))
            if i % 100 == 99:
                time.sleep(0.001)


def send_datagrams(lab: Lab, dports: range, payload: bytes = b"late") -> list[FlowKey]:
    """One datagram h1 → h2 to each port (one-way flows); returns their keys."""
    with contextlib.closing(socket_in(lab.h1, socket.AF_INET, socket.SOCK_DGRAM)) as s:
        s.bind((lab.addr["h1"], 0))
        for port in dports:
            s.sendto(payload, (lab.addr["h2"], port))
        sport = s.getsockname()[1]
    return [(17, lab.addr["h1"], sport, lab.addr["h2"], port) for port in dports]


def send_raw(lab: Lab, frames: list[bytes], host: str = "h1") -> None:
    """Send ready-made Ethernet frames out of a host's eth0 (e.g. 802.1Q-tagged ones)."""
    with contextlib.closing(socket_in(getattr(lab, host), socket.AF_PACKET, socket.SOCK_RAW)) as raw:
        raw.bind(("eth0", 0))
        for f in frames:
            raw.send(f)


def mac_of(lab: Lab, host: str) -> bytes:
    text = lab.run(getattr(lab, host), "cat", "/sys/class/net/eth0/address").stdout.strip()
    return bytes.fromhex(text.replace(":", ""))
