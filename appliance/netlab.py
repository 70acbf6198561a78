"""A test network in namespaces: two hosts joined by a transparent bridge in a third (the tap).

Used by `flowtap demo` and by the live tests. Everything lives in namespaces this module creates
(names carry a prefix and the creating pid) and is deleted again on close.

    h1 (10.77.0.1, fd77::1) ── veth ── [tap: br0 (p1, p2)] ── veth ── h2 (10.77.0.2, fd77::2)

802.1Q-tagged traffic is sent as raw frames (AF_PACKET): the kernels this runs on need not have
the 8021q module, and the bridge forwards tagged frames untouched either way.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field

from . import bridge


class LabError(Exception):
    """Setting up or using the namespaces failed."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Lab:
    """Namespaces h1, h2 and tap; br0 in tap with ports p1 (to h1) and p2 (to h2)."""

    prefix: str = field(default_factory=lambda: f"ft{os.getpid()}")

    def __post_init__(self) -> None:
        self.h1, self.h2, self.tap = (f"{self.prefix}-h1", f"{self.prefix}-h2", f"{self.prefix}-tap")
        self.bridge, self.ports = "br0", ("p1", "p2")
        self.addr = {"h1": "10.77.0.1", "h2": "10.77.0.2"}
        self.addr6 = {"h1": "fd77::1", "h2": "fd77::2"}
        self.created: list[str] = []

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        """Create the namespaces, links, bridge and addresses.

        :raises LabError: without root or iproute2.
        """
        for ns in (self.h1, self.h2, self.tap):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for host, port in (("h1", "p1"), ("h2", "p2")):
            ns = getattr(self, host)
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                "netns", self.tap)
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[host]}/24", "dev", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addr6[host]}/64", "dev", "eth0", "nodad")
        try:
            bridge.up(self.bridge, list(self.ports), netns=self.tap)
        except bridge.BridgeError as exc:
            raise LabError(str(exc)) from None
        self.wait_forwarding()

    def wait_forwarding(self, timeout: float = 5.0) -> None:
        """Wait until both bridge ports forward (the kernel enables a port on its carrier event).

        :raises LabError: when a port does not forward in time.
        """
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                state = self.run(self.tap, "cat", f"/sys/class/net/{port}/brport/state").stdout.strip()
                if state == "3":                       # BR_STATE_FORWARDING
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"bridge port {port} is not forwarding (state {state})")
                time.sleep(0.05)

    def close(self) -> None:
        """Delete every namespace this lab created (their links go with them)."""
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()

    def cmd(self, ns: str, *args: str) -> list[str]:
        """The argv that runs a command inside a namespace."""
        return ["ip", "netns", "exec", ns, *args]

    def run(self, ns: str, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside a namespace and wait for it."""
        proc = subprocess.run(self.cmd(ns, *args), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(args)} in {ns}: {proc.stderr.strip()}")
        return proc

    def popen(self, ns: str, *args: str, **kw) -> subprocess.Popen:
        """Start a command inside a namespace."""
        return subprocess.Popen(self.cmd(ns, *args), **kw)


def stop(procs: list[subprocess.Popen], timeout: float = 15) -> None:
    """SIGTERM every process (newest first), wait for each, kill what does not stop in time."""
    for p in reversed(procs):
        p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
