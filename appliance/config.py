"""Configuration as frozen dataclasses. Every key has a default, so an empty file works."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlowsConfig:
    """The flow table: capacity, idle timeouts (seconds) and the status interval."""

    max_flows: int = 262_144
    max_frags: int = 16_384
    timeout_tcp: int = 60
    timeout_udp: int = 30
    timeout_icmp: int = 30
    timeout_other: int = 30
    timeout_closed: int = 5      # after FIN both ways or RST: how long stragglers still join
    timeout_frag: int = 30       # Linux's own reassembly limit (net.ipv4.ipfrag_time)
    status_interval: int = 60


@dataclass(frozen=True)
class CaptureConfig:
    """Live capture: interfaces, kernel filter and ring."""

    interfaces: tuple[str, ...] = ()
    bpf: str = ""
    snaplen: int = 128
    ring_bytes: int = 32 * 1024 * 1024
    promisc: bool = True


@dataclass(frozen=True)
class SensorConfig:
    """The sensor's identity."""

    id: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class Config:
    """The whole configuration, passed explicitly to whatever needs a part of it."""

    sensor: SensorConfig = field(default_factory=SensorConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
