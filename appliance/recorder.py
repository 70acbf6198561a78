"""The recorder loop: capture sources → flow records → the archive writer, plus sensor status rows.

Files and live interfaces run the same loop; only the clock differs (packet time for files,
max(packet time, wall clock) live, so idle flows still end on a quiet link).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import capture
from .archive import ArchiveWriter
from .capture import Capture, CaptureError
from .config import Config

log = logging.getLogger(__name__)

STATUS_ROW_INTERVAL = 60.0     # seconds of recorder clock between sensor_status rows


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
        rate = pkts / max(t - self.started, 1e-6)
        self.stream.write(f"\r{name}: {pkts:,} packets, {stats['flows_created']:,} sessions, "
                          f"{pct:5.1f}%, {rate:,.0f} packets/s" + ("\n" if done else ""))
        self.stream.flush()


class Recorder:
    """Meters capture sources and writes every record and status row to the archives.

    :param config: the whole configuration (flows, archive, sensor id).
    :param progress: show a progress line on stderr (only meaningful on a terminal).
    Example: ``Recorder(cfg).record_files(["x.pcap"])``
    """

    def __init__(self, config: Config, progress: bool = False):
        self.config = config
        self.progress = Progress(progress)
        self.writer: ArchiveWriter | None = None
        self.last_status_at: float | None = None
        self.last_status_stats: dict[str, Any] = {}
        self.on_records: list[Callable[[list[dict[str, Any]]], None]] = []   # exporters, streams

    def _writer(self, interface: str) -> ArchiveWriter:
        if self.writer is None:
            cfg = self.config
            self.writer = ArchiveWriter(cfg.archive, cfg.sensor.id, interface, cfg.digest())
            for path in self.writer.recover():
                log.warning("recovered %s", path)
        return self.writer

    def _emit(self, cap: Capture, now_us: int) -> int:
        srcid = self.config.sensor.id
        recs = [capture.to_record(r, srcid) for r in cap.drain_raw(now_us)]
        assert self.writer is not None
        self.writer.add(recs, now=now_us / 1e6)
        for hook in self.on_records:
            hook(recs)
        return len(recs)

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
        try:
            for path in paths:
                err = self._record_file(path, writer)
                if err:
                    errors.append(err)
        finally:
            writer.close(self._file_clock or time.time())
        return errors

    _file_clock: float = 0.0

    def _record_file(self, path: str, writer: ArchiveWriter) -> str | None:
        self.last_status_at = None
        self.last_status_stats = {}
        try:
            cap = Capture.open_file(path, self.config.flows)
        except CaptureError as exc:
            return f"{path}: {exc}"
        size = Path(path).stat().st_size
        error = None
        with cap:
            while True:
                try:
                    rc = cap.poll(until_us=self._next_boundary_us(writer))
                except CaptureError as exc:
                    error = f"{path}: {exc}"
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

    def _status_tick(self, cap: Capture, interface: str, clock_synced: bool | None) -> None:
        now = cap.last_packet_us / 1e6
        if self.last_status_at is None:
            self.last_status_at = now
            return
        if now - self.last_status_at >= STATUS_ROW_INTERVAL:
            assert self.writer is not None
            self.writer.add_status(self.status_row(cap.stats(), now, interface, clock_synced))
