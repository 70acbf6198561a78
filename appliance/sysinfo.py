"""Facts about the host the status page shows: link state of interfaces, clock synchronisation."""
from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import Any

SYS_NET = Path("/sys/class/net")
TIME_ERROR = 5          # adjtimex(2): the clock is not synchronised


def link(iface: str) -> dict[str, Any]:
    """Operational state, carrier, speed (Mb/s, None if unknown) and counters of an interface."""
    base = SYS_NET / iface

    def read(name: str) -> str | None:
        try:
            return (base / name).read_text().strip()
        except OSError:
            return None

    speed = read("speed")
    stats = {}
    for name in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "rx_errors"):
        value = read(f"statistics/{name}")
        stats[name] = int(value) if value and value.isdigit() else None
    return {"name": iface, "operstate": read("operstate") or "missing",
            "carrier": read("carrier") == "1",
            "speed": int(speed) if speed and speed.lstrip("-").isdigit() and int(speed) > 0 else None,
            "promisc": bool(int(read("flags") or "0", 16) & 0x100), **stats}


def clock_synchronised() -> bool | None:
    """True when the kernel says NTP keeps the clock synchronised (adjtimex), None if unknown."""
    path = ctypes.util.find_library("c")
    if not path:
        return None
    try:
        libc = ctypes.CDLL(path, use_errno=True)
        timex = ctypes.create_string_buffer(512)      # struct timex, modes = 0: read only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR
