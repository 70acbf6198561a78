"""systemd integration against a real notify socket: the recorder started as systemd would start a
Type=notify service with WatchdogSec=2s (NOTIFY_SOCKET, WATCHDOG_USEC; no WATCHDOG_PID), recording
br0 in the namespace lab. Root only, like the other live tests."""
from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest

from conftest_live import bridge, lab, recorder  # noqa: F401  (fixtures are found by name)

pytestmark = pytest.mark.live

WATCHDOG_USEC = 2_000_000        # the recorder must ping every WATCHDOG_USEC / 2 = 1 s


def receive(sock: socket.socket, until, timeout: float) -> list[tuple[float, dict[str, str]]]:
    """Notify messages (arrival time, fields) until until(messages) is true or timeout passes."""
    messages: list[tuple[float, dict[str, str]]] = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"notify socket: gave up after {timeout} s with {[m for _, m in messages]}")
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        messages.append((time.monotonic(), fields))
    return messages


def pings(messages) -> list[tuple[float, dict[str, str]]]:
    return [(t, m) for t, m in messages if m.get("WATCHDOG") == "1"]


def test_ready_watchdog_and_status_reach_the_notify_socket(lab, recorder, tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env.update(NOTIFY_SOCKET=str(path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        rec = recorder(("br0",), env=env)
        messages = receive(sock, lambda ms: len(pings(ms)) >= 3, timeout=6)
        ready = [m for _, m in messages if m.get("READY") == "1"]
        assert ready and ready[0].get("STATUS") == "recording br0", messages
        assert messages[0][1].get("READY") == "1", "READY=1 must come before any watchdog ping"
        times = [t for t, _ in pings(messages)]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(0.5 < g < 1.6 for g in gaps), f"pings every WATCHDOG_USEC/2 = 1 s expected, got {gaps}"
        for _, m in pings(messages):
            assert re.fullmatch(r"recording br0: [\d,]+ packets/s, [\d.,]+ Mb/s", m.get("STATUS", "")), m
        rec.signal(signal.SIGTERM)
        stopping = receive(sock, lambda ms: any(m.get("STOPPING") == "1" for _, m in ms), timeout=5)
        assert stopping[-1][1]["STATUS"].startswith("stopping"), stopping
        assert rec.proc.wait(10) == 0
        assert "Logging error" not in rec.log(), rec.log()
    finally:
        sock.close()
