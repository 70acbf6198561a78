"""The recorder loop: capture sources → flow records → the archive writer, plus sensor status rows.

Files and live interfaces run the same loop; only the clock differs (packet time for files,
max(packet time, wall clock) live, so idle flows still end on a quiet link).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__, capture, ipfix, pipe_input, service, sysinfo
from . import config as config_mod
from .archive import ArchiveWriter
from .capture import Capture, CaptureError
from .config import Config

log = logging.getLogger(__name__)

STATUS_ROW_INTERVAL = 60.0     # seconds of recorder clock between sensor_status rows
STATUS_FILE_INTERVAL = 1.0     # seconds between status.json snapshots (live)
RATE_HISTORY = 360             # 10-second rate samples kept in status.json: one hour
TOP_SESSIONS, TOP_SESSIONS_INTERVAL = 20, 5.0   # busiest open sessions, refreshed every 5 s
DEFAULT_RUNTIME_DIR = "/run/flowtap"
RING_BLOCK_TIMEOUT = 0.15      # seconds: the capture's block timeout (capture.native_config) + margin


class Progress:
    """One self-overwriting line on a terminal: packets, sessions, percent of the file, rate."""

    def __init__(self, enabled: bool, stream: Any = sys.stderr):
        self.enabled = enabled
        self.stream = stream
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, name: str, stats: dict[str, Any], file_bytes: int, done: bool = False) -> None:
        if not self.enabled:
            return
        t = time.monotonic()
        if not done and t - self.last < 0.5:
            return
        self.last = t
        pkts = stats["packets"]
        # pcap stores a 16-byte header per packet; the wire length approximates the captured bytes.
        pct = 100.0 if done else min(99.9, 100.0 * (stats["bytes"] + 16 * pkts) / max(file_bytes, 1))
        share = f"{pct:5.1f}%, " if file_bytes or done else ""      # a pipe has no size
        rate = pkts / max(t - self.started, 1e-6)
        self.stream.write(f"\r{name}: {pkts:,} packets, {stats['flows_created']:,} sessions, "
                          f"{share}{rate:,.0f} packets/s" + ("\n" if done else ""))
        self.stream.flush()


class Recorder:
    """Meters capture sources and writes every record and status row to the archives.

    :param config: the whole configuration (flows, archive, sensor id).
    :param progress: show a progress line on stderr (only meaningful on a terminal).
    Example: ``Recorder(cfg).record_files(["x.pcap"])``
    """

    def __init__(self, config: Config, progress: bool = False, reload: Callable[[], Config] | None = None,
                 runtime_dir: str | None = None):
        self.config = config
        self.reload_config = reload          # SIGHUP: returns the new configuration
        self.runtime_dir = Path(runtime_dir or os.environ.get("FLOWTAP_RUNTIME_DIR", DEFAULT_RUNTIME_DIR))
        self.stopping = False
        self.reload_requested = False
        self.started = time.time()
        self.progress = Progress(progress)
        self.writer: ArchiveWriter | None = None
        self.last_status_at: float | None = None
        self.last_status_stats: dict[str, Any] = {}
        self.on_records: list[Callable[[list[dict[str, Any]]], None]] = []   # exporters, streams
        self.exporter: ipfix.Exporter | None = None     # IPFIX, while recording with [export] collectors
        self.exported: tuple[str, ...] = ()             # collectors kept out of live capture

    def _writer(self, interface: str) -> ArchiveWriter:
        if self.writer is None:
            cfg = self.config
            self.writer = ArchiveWriter(cfg.archive, cfg.sensor.id, interface, cfg.digest())
            for path in self.writer.recover():
                log.warning("recovered %s", path)
        return self.writer

    def _emit(self, cap: Capture, now_us: int) -> int:
        assert self.writer is not None
        total = 0
        for packed in cap.drain_packed(now_us):
            self.writer.add_packed(packed, now=now_us / 1e6)
            if self.on_records:             # dicts only for exporters: the archive needs none
                recs = capture.unpack_records(packed, self.config.sensor.id)
                for hook in self.on_records:
                    hook(recs)
            total += len(packed) // capture.RECORD_SIZE
        return total

    def status_row(self, stats: dict[str, Any], now: float, interface: str,
                   clock_synced: bool | None) -> dict[str, Any]:
        """A sensor_status row: counters since the previous row (Argus MAR semantics)."""
        prev = self.last_status_stats
        delta = {k: stats[k] - prev.get(k, 0) for k in ("packets", "bytes", "pcap_drop", "pcap_ifdrop",
                                                         "flows_created", "flows_ended", "evicted",
                                                         "gap_acks", "records")}
        errors = {k: v - prev.get("decode_errors", {}).get(k, 0) for k, v in stats["decode_errors"].items()}
        interval = now - self.last_status_at if self.last_status_at is not None else 0.0
        self.last_status_at = now
        self.last_status_stats = stats
        return {"time": now, "interval": interval, "interface": interface,
                "packets": delta["packets"], "bytes": delta["bytes"],
                "kernel_drops": delta["pcap_drop"], "interface_drops": delta["pcap_ifdrop"],
                "decode_errors": {k: v for k, v in errors.items() if v},
                "flows_active": stats["flows_active"], "flows_created": delta["flows_created"],
                "flows_ended": delta["flows_ended"], "flows_evicted": delta["evicted"],
                "table_capacity": stats["flows_capacity"],
                "occupancy": stats["flows_active"] / max(stats["flows_capacity"], 1),
                "gap_acks": delta["gap_acks"], "records": delta["records"],
                "clock_synced": None if clock_synced is None else int(clock_synced)}

    def record_files(self, paths: Sequence[str]) -> list[str]:
        """Meter each capture file in turn into the archives; returns per-file error messages
        (a truncated or corrupt file still has what could be read recorded)."""
        errors = []
        writer = self._writer(",".join(os.path.basename(p) for p in paths))
        with self._exporting(lossless=True):
            try:
                for path in paths:
                    err = self._record_file(path, writer)
                    if err:
                        errors.append(err)
            finally:
                writer.close(self._file_clock or time.time())
        return errors

    @contextlib.contextmanager
    def _exporting(self, lossless: bool) -> Iterator[None]:
        """Export records to the [export] collectors while recording (files: lossless, waiting for
        the sender; live: never waiting, drops counted), then send what is queued and stop."""
        export = self.config.export
        if not export.collectors:
            yield
            return
        self.exporter = ipfix.Exporter.from_config(export, self.config.sensor.id, lossless=lossless)
        self.on_records.append(self.exporter)
        try:
            yield
        finally:
            self.on_records.remove(self.exporter)
            self.exporter.close()

    _file_clock: float = 0.0

    def _record_file(self, path: str, writer: ArchiveWriter) -> str | None:
        """Meter one capture file, ``-`` (stdin) or named pipe; returns its error, if any."""
        with contextlib.ExitStack() as stack:
            try:
                source = stack.enter_context(pipe_input.capture_path(path))
            except (OSError, pipe_input.NotACapture) as exc:
                return f"{path}: {getattr(exc, 'strerror', None) or exc}"
            return self._record_source(path, source, writer)

    def _record_source(self, path: str, source: str, writer: ArchiveWriter) -> str | None:
        self.last_status_at = None
        self.last_status_stats = {}
        try:
            cap = Capture.open_file(source, self.config.flows)
        except CaptureError as exc:
            return f"{path}: {str(exc).removeprefix(f'{source}: ')}"    # libpcap names the file too
        size = os.stat(source).st_size if source == path else 0      # a pipe has no size
        error = None
        with cap:
            while True:
                try:
                    rc = cap.poll(until_us=self._next_boundary_us(writer))
                except CaptureError as exc:
                    error = f"{path}: {str(exc).removeprefix(f'{source}: ')}"
                    break
                now_us = cap.last_packet_us
                self._emit(cap, now_us)
                self._file_clock = now_us / 1e6
                self._status_tick(cap, path, clock_synced=None)
                self.progress.update(os.path.basename(path), cap.stats(), size)
                if rc == capture.lib.SENSOR_EOF:
                    break
            cap.end_all(capture.lib.SENSOR_CAUSE_SHUTDOWN)
            now_us = cap.last_packet_us
            self._emit(cap, now_us)
            stats = cap.stats()
            writer.add_status(self.status_row(stats, now_us / 1e6, path, None))
            self.progress.update(os.path.basename(path), stats, size, done=True)
        return error

    def _next_boundary_us(self, writer: ArchiveWriter) -> int:
        """Packet time at which the file loop must look up: the next rotation or status row."""
        if not self._file_clock:
            return 1                                   # the first packet sets the clock
        interval = self.config.archive.rotate_interval
        rotation = self._file_clock - self._file_clock % interval + interval
        status = (self.last_status_at or self._file_clock) + STATUS_ROW_INTERVAL
        return int(min(rotation, status) * 1e6)

    def _status_tick(self, cap: Capture, interface: str, clock_synced: bool | None,
                     now: float | None = None) -> None:
        now = cap.last_packet_us / 1e6 if now is None else now
        if self.last_status_at is None:
            self.last_status_at = now
            return
        if now - self.last_status_at >= STATUS_ROW_INTERVAL:
            assert self.writer is not None
            self.writer.add_status(self.status_row(cap.stats(), now, interface, clock_synced))

    # -- live -------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    def record_live(self) -> int:
        """Record the configured interfaces until SIGTERM/SIGINT; SIGHUP reloads the configuration.

        On stop every open session ends with cause Shutdown, is written, and the archive is closed.
        Returns the exit status (0 after a clean stop).
        :raises CaptureError: when an interface cannot be opened (missing, no privileges, bad BPF).
        """
        cfg = self.config
        ifaces = cfg.capture.interfaces
        name = ",".join(ifaces)
        writer = self._writer(name)
        c = cfg.capture
        # Never meter our own export traffic: the collectors' traffic is filtered out in the kernel.
        self.exported = cfg.export.collectors
        bpf = ipfix.capture_filter(c.bpf, self.exported)
        cap = Capture.open_live(ifaces, cfg.flows, bpf, c.snaplen, c.ring_bytes, c.promisc,
                                c.inbound_only)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        log.info("recording %s (bpf %r)", name, bpf)
        service.notify(READY="1", STATUS=f"recording {name}")
        watchdog = service.watchdog_interval()
        self.live = LiveState(ifaces)
        last_watchdog = last_file = last_top = 0.0
        with cap, self._exporting(lossless=False):
            fds = cap.filenos()
            while not self.stopping:
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload(cap, writer)
                select.select(fds, [], [], 0.1)
                while cap.poll() == capture.POLL_PACKETS:   # a full batch: more may be waiting
                    self._emit_live(cap)
                now_us = self._emit_live(cap)
                now = now_us / 1e6
                writer.tick(now)
                self._status_tick(cap, name, clock_synced=sysinfo.clock_synchronised(), now=now)
                mono = time.monotonic()
                if mono - last_file >= STATUS_FILE_INTERVAL:
                    last_file = mono
                    self.live.sample(cap.stats(), now)
                    if mono - last_top >= TOP_SESSIONS_INTERVAL:
                        last_top = mono
                        self.live.top = cap.top_flows(TOP_SESSIONS, cfg.sensor.id)
                    self.write_status(cap, writer)
                if watchdog and mono - last_watchdog >= watchdog:
                    last_watchdog = mono
                    service.notify(WATCHDOG="1", STATUS=self.live.summary())
            service.notify(STOPPING="1", STATUS="stopping: ending every open session")
            self._drain_ring(cap)
            cap.end_all(capture.lib.SENSOR_CAUSE_SHUTDOWN)
            now_us = self._emit_live(cap)
            writer.add_status(self.status_row(cap.stats(), now_us / 1e6, name,
                                              sysinfo.clock_synchronised()))
            writer.close(now_us / 1e6)
            self.live.state = "stopped"
            self.write_status(cap, writer)
        log.info("stopped; %d records written", writer.records_written)
        return 0

    def _drain_ring(self, cap: Capture) -> None:
        """Meter the frames still in the capture ring before the final records. The kernel hands a
        TPACKET_V3 block to libpcap only when it is full or its timeout passed, so frames of the
        last ~100 ms are not readable yet: wait out one block timeout, then read to the end."""
        time.sleep(RING_BLOCK_TIMEOUT)
        while cap.poll() > 0:
            self._emit_live(cap)

    def _emit_live(self, cap: Capture) -> int:
        now_us = max(cap.last_packet_us, int(time.time() * 1e6))
        self._emit(cap, now_us)
        return now_us

    def _reload(self, cap: Capture, writer: ArchiveWriter) -> None:
        """Apply a new configuration without losing open sessions: BPF, timeouts, retention."""
        if self.reload_config is None:
            return
        try:
            new = self.reload_config()
        except config_mod.ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self.config
        if new.capture.bpf != old.capture.bpf:
            try:
                cap.set_filter(ipfix.capture_filter(new.capture.bpf, self.exported))
            except CaptureError as exc:
                log.error("reload: new BPF filter refused, keeping %r: %s", old.capture.bpf, exc)
                new = config_mod.replace_section(new, "capture", bpf=old.capture.bpf)
        if new.flows != old.flows:
            cap.reconfigure(new.flows)
        if (new.capture.interfaces != old.capture.interfaces or new.archive.dir != old.archive.dir
                or new.export != old.export):
            log.warning("interfaces, archive directory or export changed: restart the recorder to apply")
        writer.cfg = dataclasses.replace(new.archive, dir=old.archive.dir)
        self.config = new
        log.info("configuration reloaded (digest %s, bpf %r)", new.digest(), new.capture.bpf)

    def write_status(self, cap: Capture, writer: ArchiveWriter) -> None:
        """Atomically replace status.json in the runtime directory (the web page reads it)."""
        stats = cap.stats()
        cfg = self.config
        now = time.time()
        doc = {
            "version": __version__, "sensor_id": cfg.sensor.id, "state": self.live.state,
            "since": self.started, "time": now, "uptime": now - self.started,
            "pid": os.getpid(), "bpf": cfg.capture.bpf, "config_digest": cfg.digest(),
            "interfaces": [dict(sysinfo.link(i), **s) for i, s in
                           zip(cap.interfaces, cap.source_stats())],
            "packets": stats["packets"], "bytes": stats["bytes"],
            "kernel_drops": stats["pcap_drop"], "interface_drops": stats["pcap_ifdrop"],
            "decode_errors": stats["decode_errors"], "flows_active": stats["flows_active"],
            "flows_capacity": stats["flows_capacity"], "flows_evicted": stats["evicted"],
            "records": stats["records"], "records_written": writer.records_written,
            "records_lost": writer.records_lost, "write_errors": writer.write_errors,
            "last_error": writer.last_error,
            "export": self.exporter.stats() if self.exporter else [],
            "pps": self.live.pps, "bps": self.live.bps, "rates": list(self.live.rates),
            "archive": dict(writer.usage(), current=writer.current.path.name if writer.current else None,
                            dir=str(writer.dir)),
            "clock_synced": sysinfo.clock_synchronised(),
            "top_sessions": self.live.top,
        }
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.runtime_dir / "status.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.runtime_dir / "status.json")


class LiveState:
    """Rates for the status page: packets/s and bits/s now, and 10-second samples for an hour."""

    def __init__(self, interfaces: Sequence[str]):
        self.interfaces = interfaces
        self.state = "recording"
        self.top: list[dict[str, Any]] = []
        self.pps = self.bps = 0.0
        self.rates: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=RATE_HISTORY)
        self._last: tuple[float, int, int] | None = None
        self._bucket: tuple[float, int, int] | None = None

    def sample(self, stats: dict[str, Any], now: float) -> None:
        pkts, nbytes = stats["packets"], stats["bytes"]
        if self._last is not None:
            dt = max(now - self._last[0], 1e-6)
            self.pps = (pkts - self._last[1]) / dt
            self.bps = 8 * (nbytes - self._last[2]) / dt
        self._last = (now, pkts, nbytes)
        if self._bucket is None:
            self._bucket = (now, pkts, nbytes)
        elif now - self._bucket[0] >= 10:
            dt = now - self._bucket[0]
            self.rates.append((round(now, 3), (pkts - self._bucket[1]) / dt,
                               8 * (nbytes - self._bucket[2]) / dt))
            self._bucket = (now, pkts, nbytes)

    def summary(self) -> str:
        return f"{self.state} {','.join(self.interfaces)}: {self.pps:,.0f} packets/s, {self.bps / 1e6:,.1f} Mb/s"
