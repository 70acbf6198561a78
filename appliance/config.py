"""Configuration: /etc/flowtap/flowtap.toml → frozen dataclasses, validated on load.

Every key has a default, so an empty file works. An unknown key, a wrong type or a value out of range
is a :class:`ConfigError` whose message names the key, e.g. ``flows.timeout_tcp: must be an integer
from 1 to 86400, got 'soon'``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/flowtap/flowtap.toml")
DAY = 86_400


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class SensorConfig:
    """The sensor's identity (Argus `srcid`)."""

    id: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class CaptureConfig:
    """Live capture: interfaces, kernel filter, snaplen and the memory-mapped ring."""

    interfaces: tuple[str, ...] = ()
    bpf: str = ""
    snaplen: int = 128                 # headers only: enough for QinQ + IPv6 + TCP options
    ring_bytes: int = 32 * 1024 * 1024
    promisc: bool = True
    inbound_only: bool = False         # capture on bridge member ports, each frame once


@dataclass(frozen=True)
class FlowsConfig:
    """The flow table: capacity, idle timeouts (seconds) and the status interval."""

    max_flows: int = 262_144
    max_frags: int = 16_384
    timeout_tcp: int = 60
    timeout_udp: int = 30
    timeout_icmp: int = 30
    timeout_other: int = 30
    timeout_closed: int = 5            # after FIN both ways or RST: how long stragglers still join
    timeout_frag: int = 30             # Linux's own reassembly limit (net.ipv4.ipfrag_time)
    status_interval: int = 60


@dataclass(frozen=True)
class ArchiveConfig:
    """Rotating SQLite archives and their retention."""

    dir: str = "/var/lib/flowtap/archive"
    rotate_interval: int = 3600        # seconds, UTC-aligned
    size_cap: int = 512 * 1024 * 1024  # bytes: rotate early when the open archive reaches this
    quota_bytes: int = 0               # 0 = no byte quota
    min_free_percent: float = 15.0     # keep this much of the filesystem free
    max_age: int = 0                   # seconds; 0 = keep until the quota needs the space
    commit_interval: float = 5.0       # seconds: at most this much is lost on power failure


@dataclass(frozen=True)
class WebConfig:
    """The admin web page."""

    listen: str = "127.0.0.1:8080"


@dataclass(frozen=True)
class ExportConfig:
    """IPFIX collectors (``ipfix+udp://HOST:PORT`` or ``ipfix+tcp://HOST:PORT``)."""

    collectors: tuple[str, ...] = ()
    uniflow: bool = False


# Formats the alert follower can tail: line formats only (unified2 is read by `alerts import`).
ALERT_FORMATS = ("auto", "eve", "snort3-json", "snort3-csv", "fast")


@dataclass(frozen=True)
class AlertsConfig:
    """IDS alert files followed into the alert store (``flowtap alerts follow``)."""

    files: tuple[str, ...] = ()
    format: str = "auto"               # or one of ALERT_FORMATS; auto: detected per file
    state_file: str = ""               # empty: alerts/follow.json beside archive.dir
    poll_interval: float = 1.0         # seconds between looks at the files
    batch: int = 5000                  # at most this many alerts per import transaction

    def state_path(self, archive_dir: str | os.PathLike[str]) -> Path:
        """Where the follower keeps its place; by default in the data dir the archives are in."""
        if self.state_file:
            return Path(self.state_file)
        return Path(archive_dir).parent / "alerts" / "follow.json"


@dataclass(frozen=True)
class Config:
    """The whole configuration, passed explicitly to whatever needs a part of it."""

    sensor: SensorConfig = field(default_factory=SensorConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    web: WebConfig = field(default_factory=WebConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    def digest(self) -> str:
        """A short hash of the effective configuration (recorded in each archive)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Ranges for numeric keys: (minimum, maximum).
RANGES: dict[str, tuple[float, float]] = {
    "capture.snaplen": (64, 262_144),
    "capture.ring_bytes": (1 << 20, 1 << 31),
    "flows.max_flows": (1024, 1 << 26),
    "flows.max_frags": (64, 1 << 22),
    "flows.timeout_tcp": (1, DAY),
    "flows.timeout_udp": (1, DAY),
    "flows.timeout_icmp": (1, DAY),
    "flows.timeout_other": (1, DAY),
    "flows.timeout_closed": (1, DAY),
    "flows.timeout_frag": (1, 600),
    "flows.status_interval": (0, DAY),
    "archive.rotate_interval": (60, DAY),
    "archive.size_cap": (1 << 20, 1 << 40),
    "archive.quota_bytes": (0, 1 << 50),
    "archive.min_free_percent": (0, 90),
    "archive.max_age": (0, 3650 * DAY),
    "archive.commit_interval": (0.1, 300),
    "alerts.poll_interval": (0.1, 60),
    "alerts.batch": (1, 100_000),
}

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Validate one value against the type of its default; return it in the dataclass's type."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        ok_type = (int,) if isinstance(default, int) else (int, float)
        low, high = RANGES.get(key, (0, float("inf")))
        if isinstance(value, bool) or not isinstance(value, ok_type) or not low <= value <= high:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ConfigError(f"{key}: must be {kind} from {low:g} to {high:g}, got {value!r}")
        return type(default)(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{key}: must be a list of non-empty strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    return value


def _validate_semantics(cfg: Config) -> None:
    for url in cfg.export.collectors:
        if not url.startswith(("ipfix+udp://", "ipfix+tcp://")):
            raise ConfigError(f"export.collectors: {url!r} must start with ipfix+udp:// or ipfix+tcp://")
    host, sep, port = cfg.web.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"web.listen: must be HOST:PORT, got {cfg.web.listen!r}")
    if not cfg.sensor.id or len(cfg.sensor.id) > 64 or not cfg.sensor.id.isprintable() \
            or any(c.isspace() for c in cfg.sensor.id):
        raise ConfigError(f"sensor.id: must be 1 to 64 printable characters without spaces, "
                          f"got {cfg.sensor.id!r}")
    for iface in cfg.capture.interfaces:
        if len(iface) > 15 or "/" in iface or not iface.isprintable() or any(c.isspace() for c in iface):
            raise ConfigError(f"capture.interfaces: {iface!r} is not an interface name")
    for path in cfg.alerts.files:
        if not os.path.isabs(path):
            raise ConfigError(f"alerts.files: {path!r} must be an absolute path")
    if cfg.alerts.format not in ALERT_FORMATS:
        raise ConfigError(f"alerts.format: must be one of {', '.join(ALERT_FORMATS)}, "
                          f"got {cfg.alerts.format!r}")
    if cfg.alerts.state_file and not os.path.isabs(cfg.alerts.state_file):
        raise ConfigError(f"alerts.state_file: must be an absolute path or empty, "
                          f"got {cfg.alerts.state_file!r}")


def from_dict(data: dict[str, Any]) -> Config:
    """Build a validated Config from parsed TOML.

    :raises ConfigError: naming the first bad key.
    """
    sections = {}
    for name, value in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a table ([{name}])")
        cls = {f.name: f for f in dataclasses.fields(Config)}[name].default_factory
        defaults = cls()
        known = {f.name for f in dataclasses.fields(defaults)}
        values = {}
        for key, item in value.items():
            if key not in known:
                raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
            values[key] = _check_value(f"{name}.{key}", item, getattr(defaults, key))
        sections[name] = dataclasses.replace(defaults, **values)
    cfg = Config(**sections)
    _validate_semantics(cfg)
    return cfg


def override(cfg: Config, interfaces: tuple[str, ...] = (), bpf: str | None = None,
             data_dir: str | None = None, exports: tuple[str, ...] = ()) -> Config:
    """Apply command-line overrides (``-i``, ``-f``, ``-d``, ``--export``) and validate again.

    :raises ConfigError: when an override is invalid.
    """
    capture = cfg.capture
    if interfaces:
        capture = dataclasses.replace(capture, interfaces=tuple(interfaces))
    if bpf is not None:
        capture = dataclasses.replace(capture, bpf=bpf)
    archive = cfg.archive
    if data_dir is not None:
        archive = dataclasses.replace(archive, dir=str(Path(data_dir) / "archive")
                                      if Path(data_dir).name != "archive" else data_dir)
    export = cfg.export
    if exports:
        export = dataclasses.replace(export, collectors=tuple(exports))
    out = dataclasses.replace(cfg, capture=capture, archive=archive, export=export)
    _validate_semantics(out)
    return out


def replace_section(cfg: Config, section: str, **values: Any) -> Config:
    """A copy of cfg with some keys of one section replaced."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a TOML config file; a missing default file means all defaults.

    :raises ConfigError: on a syntax error or an invalid value, naming the key.
    Example: ``cfg = load("/etc/flowtap/flowtap.toml"); cfg.flows.timeout_tcp``
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    if path is None and not p.exists():
        return Config()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return from_dict(data)
