"""A transparent Linux bridge: no address, STP off, ports promiscuous, bridge netfilter off.

The appliance image does the same with systemd-networkd files (systemd/network/); this module
serves other installs, the demo and the tests. Everything goes through iproute2 and sysfs.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from . import sysinfo

# Forward every link-local group the kernel lets a bridge forward (LLDP, 802.1X, ...): bits 0-2
# (STP, PAUSE, LACP) are refused by the kernel and stay local.
GROUP_FWD_MASK = 0xFFF8
BRIDGE_NF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


class BridgeError(Exception):
    """A bridge command failed; the message says which and why."""


def _prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def _run(args: list[str], netns: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(_prefix(netns) + args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BridgeError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _write(path: str, value: str, netns: str | None) -> bool:
    proc = subprocess.run(_prefix(netns) + ["sh", "-c", f"echo {value} > {path}"], capture_output=True)
    return proc.returncode == 0


def up(bridge: str, ports: list[str], netns: str | None = None) -> None:
    """Create (or adopt) `bridge` with `ports` as members, transparent and addressless.

    :raises BridgeError: when iproute2 refuses (missing port, no privileges).
    Example: ``up("br0", ["eth0", "eth1"])``
    """
    if not Path(f"/sys/class/net/{bridge}").exists() or netns:
        _run(["ip", "link", "add", bridge, "type", "bridge"], netns, check=False)
    _run(["ip", "link", "set", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0",
          "mcast_snooping", "0", "group_fwd_mask", str(GROUP_FWD_MASK)], netns)
    # No address of any kind: the sensor must not take part in the traffic it watches.
    _write(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6", "1", netns)
    _run(["ip", "addr", "flush", "dev", bridge], netns)
    for port in ports:
        _write(f"/proc/sys/net/ipv6/conf/{port}/disable_ipv6", "1", netns)
        _run(["ip", "addr", "flush", "dev", port], netns)
        _run(["ip", "link", "set", port, "master", bridge], netns)
        _run(["ip", "link", "set", port, "promisc", "on", "up"], netns)
    _run(["ip", "link", "set", bridge, "promisc", "on", "up"], netns)
    for name in BRIDGE_NF:    # only present when br_netfilter is loaded
        _write(f"/proc/sys/net/bridge/{name}", "0", netns)


def down(bridge: str, netns: str | None = None) -> None:
    """Release the ports and delete the bridge.

    :raises BridgeError: when the bridge does not exist.
    """
    for port in ports_of(bridge, netns):
        _run(["ip", "link", "set", port, "nomaster"], netns, check=False)
    _run(["ip", "link", "del", bridge], netns)


def ports_of(bridge: str, netns: str | None = None) -> list[str]:
    """Member ports of a bridge."""
    out = _run(["ls", f"/sys/class/net/{bridge}/brif"], netns, check=False)
    return out.split()


def status(bridge: str) -> dict[str, Any]:
    """The bridge and each port: state, carrier, speed, promiscuous, counters (this namespace).

    :raises BridgeError: when the bridge does not exist.
    """
    if not Path(f"/sys/class/net/{bridge}/bridge").exists():
        raise BridgeError(f"{bridge}: no such bridge")
    stp = Path(f"/sys/class/net/{bridge}/bridge/stp_state").read_text().strip()
    return {"bridge": sysinfo.link(bridge), "stp": stp != "0",
            "addresses": _run(["ip", "-brief", "addr", "show", "dev", bridge]).split()[2:],
            "ports": [sysinfo.link(p) for p in ports_of(bridge)]}
