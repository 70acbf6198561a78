"""The dashboard (with the alerts of the last hour), live sessions, /api/status, /metrics
(Prometheus) and /healthz.

The dashboard and the Live page each have a fragment route (``/dashboard/panel``, ``/live/panel``)
that static/app.js swaps in every few seconds; a fragment carries the ``X-Flowtap-Fragment`` header
so the script can tell it from a login page or an error page. Without the recorder the dashboard
still shows what the archive directory itself says.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, make_response, render_template
from markupsafe import Markup, escape

from .. import __version__
from .. import fields as _fields
from . import alerts as _alerts_page
from . import archives as _archives

bp = Blueprint("dashboard", __name__)

OPEN_SESSIONS_SHOWN = 64       # rows of status.json's top_sessions rendered at most (the recorder sends 20)
TEXT_LIMIT = 64                # characters of a string field of an open session shown at most
NEWEST_LOOKBACK = 3            # archives looked at, newest first, for the newest record (one may be empty)


def read_status() -> dict[str, Any] | None:
    """The recorder's status.json with ``age`` (seconds) and ``fresh`` added, or None."""
    path = Path(current_app.config["RUNTIME_DIR"]) / "status.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    doc["age"] = max(0.0, time.time() - float(doc.get("time") or 0))
    doc["fresh"] = doc["age"] < current_app.config["STATUS_MAX_AGE"]
    return doc


def health(status: dict[str, Any] | None) -> str | None:
    """Why the sensor is not recording, or None when it is."""
    if status is None:
        return "no status from the recorder (is flowtap-recorder running?)"
    if not status["fresh"]:
        return f"the recorder's status is {status['age']:.0f} s old"
    if status.get("state") != "recording":
        return f"the recorder is {status.get('state')}"
    return None


def _number(value: Any) -> float | None:
    """A finite number of at most 64 bits from status.json, else None (the file is parsed, not
    trusted: JSON allows NaN and integers of any length)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return value if abs(value) < 2**64 else None
    return value if math.isfinite(value) else None


def human_bytes(n: float | None) -> str:
    if _number(n) is None:             # missing from an older or partial status.json
        return "–"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""


def human_rate(n: float | None, unit: str) -> str:
    if _number(n) is None:
        return "–"
    for prefix in ("", "k", "M", "G"):
        if abs(n) < 1000 or prefix == "G":
            return f"{n:,.1f} {prefix}{unit}"
        n /= 1000
    return ""


def human_duration(seconds: float | None) -> str:
    if _number(seconds) is None:
        return "–"
    s = max(0, int(seconds))           # a clock set back must not print "-1d 23h"
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m {s}s" if h else f"{m}m {s}s"


def chart(rates: list, column: int, title: str, unit: str, now: float) -> Markup:
    """An inline SVG line chart of one rate over the last hour (no script, no inline style)."""
    w, h, left, bottom = 600, 150, 60, 20
    pts = [(float(r[0]), float(r[column])) for r in rates if now - float(r[0]) <= 3600]
    top = max([v for _, v in pts] + [1.0])
    out = [f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{escape(title)}">',
           f'<title>{escape(title)}</title>',
           f'<line class="axis" x1="{left}" y1="{h - bottom}" x2="{w}" y2="{h - bottom}"/>',
           f'<line class="axis" x1="{left}" y1="0" x2="{left}" y2="{h - bottom}"/>',
           f'<text x="{left - 4}" y="12" text-anchor="end">{escape(human_rate(top, unit))}</text>',
           f'<text x="{left - 4}" y="{h - bottom}" text-anchor="end">0</text>',
           f'<text x="{left}" y="{h - 4}">−60 min</text>',
           f'<text x="{w}" y="{h - 4}" text-anchor="end">now</text>']
    if pts:
        xy = " ".join(f"{left + (w - left) * (1 - (now - t) / 3600):.1f},"
                      f"{(h - bottom) * (1 - v / top):.1f}" for t, v in pts)
        out.append(f'<polyline class="line" points="{xy}"/>')
    else:
        out.append(f'<text x="{(w + left) // 2}" y="{h // 2}" text-anchor="middle">no samples yet</text>')
    out.append("</svg>")
    return Markup("".join(out))


def file_bytes(path: Path) -> int:
    """Bytes of an archive with its WAL; 0 when retention removed it since it was listed."""
    total = 0
    for part in (path, Path(f"{path}-wal")):
        try:
            total += part.stat().st_size
        except OSError:
            pass
    return total


def last_written(path: Path) -> float | None:
    """When an archive (or its WAL, where an open archive's writes land first) last changed."""
    times = []
    for part in (path, Path(f"{path}-wal")):
        try:
            times.append(part.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=None)


def newest_record(paths: list[Path]) -> float | None:
    """Start time of the newest record, from the last few archives (a fresh one may be empty)."""
    for path in reversed(paths[-NEWEST_LOOKBACK:]):
        last = _archives.describe(path).get("last")
        if last is not None:
            return last
    return None


def archive_state() -> dict[str, Any]:
    """What the archive directory says by itself, recorder or not: archives kept, their bytes, the
    oldest and newest record, the filesystem's size and free space, the archive written last."""
    directory = Path(current_app.config["ARCHIVE_DIR"])
    paths = list(_archives.archive_paths().values())
    state: dict[str, Any] = {
        "dir": str(directory), "archives": len(paths), "bytes": sum(file_bytes(p) for p in paths),
        "oldest": _archives.oldest_record(), "newest": newest_record(paths),
        "last_name": paths[-1].name if paths else None,
        "last_written": last_written(paths[-1]) if paths else None,
        "fs_bytes": None, "fs_free": None, "free_percent": None, "error": None}
    try:
        fs = shutil.disk_usage(directory)
    except OSError as e:
        state["error"] = f"cannot read {directory}: {e.strerror or e}"
        return state
    state.update(fs_bytes=fs.total, fs_free=fs.free,
                 free_percent=100.0 * fs.free / fs.total if fs.total else None)
    return state


def _text(value: Any) -> str:
    return value[:TEXT_LIMIT] if isinstance(value, str) else ""


def open_sessions(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The recorder's busiest open sessions (status.json ``top_sessions``, records as
    ``capture.to_record`` makes them), checked field by field and at most OPEN_SESSIONS_SHOWN."""
    rows = (status or {}).get("top_sessions")
    if not isinstance(rows, list):
        return []
    out = []
    for r in rows[:OPEN_SESSIONS_SHOWN]:
        if not isinstance(r, dict):
            continue
        proto = r.get("proto") if isinstance(r.get("proto"), int) else None
        saddr = _text(r.get("saddr"))
        out.append({"stime": _number(r.get("stime")), "dur": _number(r.get("dur")),
                    "proto": _fields.proto_name(proto, saddr) if proto is not None else "",
                    "saddr": saddr, "sport": _number(r.get("sport")), "dir": _text(r.get("dir")),
                    "daddr": _text(r.get("daddr")), "dport": _number(r.get("dport")),
                    "pkts": _number(r.get("pkts")), "bytes": _number(r.get("bytes")),
                    "state": _text(r.get("state"))})
    return out


def _view() -> dict[str, Any]:
    status = read_status()
    now = time.time()
    arch = (status or {}).get("archive") or {}
    used = None
    if arch.get("fs_bytes"):
        used = 100.0 * (arch["fs_bytes"] - arch["fs_free"]) / arch["fs_bytes"]
    disk = archive_state()
    return {"s": status, "problem": health(status), "now": now, "disk_used": used,
            "horizon": disk["oldest"], "disk": disk,
            "pps_chart": chart((status or {}).get("rates") or [], 1, "packets/s, last hour", "p/s", now),
            "bps_chart": chart((status or {}).get("rates") or [], 2, "bits/s, last hour", "b/s", now)}


def fragment(template: str, name: str, **context: Any) -> Response:
    """A page fragment for static/app.js, marked so it is never mistaken for a whole page."""
    resp = make_response(render_template(template, **context))
    resp.headers["X-Flowtap-Fragment"] = name
    return resp


@bp.app_template_filter("bytes")
def _bytes_filter(n):
    return human_bytes(n)


@bp.app_template_filter("thousands")
def _thousands_filter(n):
    """A count with thousands separators: 4,242,424; "–" when it is not a number."""
    return "–" if _number(n) is None else f"{n:,.0f}"


@bp.app_template_filter("duration")
def _duration_filter(s):
    return human_duration(s)


@bp.app_template_filter("rate")
def _rate_filter(n, unit=""):
    return human_rate(n, unit)


@bp.app_template_filter("clock")
def _clock_filter(t):
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError, OverflowError, OSError):    # missing, not a time, out of range
        return "–"


@bp.route("/")
def index():
    """Recording state, ports, rates, drops, sessions, disk and retention, clock, version; the
    alerts of the last hour (once per load: the live panel alone refreshes)."""
    return render_template("dashboard.html", alerts=_alerts_page.dashboard_summary(), **_view())


@bp.route("/dashboard/panel")
def panel():
    """The dashboard's live part alone (the page's script swaps it in every few seconds)."""
    return fragment("_panel.html", "panel", **_view())


def _live_view() -> dict[str, Any]:
    status = read_status()
    current = ((status or {}).get("archive") or {}).get("current")
    rows, until = _archives.recent_sessions(current if isinstance(current, str) else None)
    return {"s": status, "problem": health(status), "now": time.time(),
            "open_sessions": open_sessions(status), "rows": rows, "until": until}


@bp.route("/live")
def live():
    """The recorder's busiest open sessions (status.json) and the busiest records of the last
    minute of the open archive."""
    return render_template("live.html", **_live_view())


@bp.route("/live/panel")
def live_panel():
    """The Live page's tables alone (the page's script swaps them in every few seconds)."""
    return fragment("_live_panel.html", "live-panel", **_live_view())


@bp.route("/api/status")
def api_status():
    """status.json as the recorder wrote it, plus age, health and the retention horizon."""
    status = read_status()
    problem = health(status)
    return jsonify({"status": status, "recording": problem is None, "problem": problem,
                    "horizon": _archives.oldest_record(), "web_version": __version__})


@bp.route("/healthz")
def healthz():
    """200 while recording (fresh status, state recording); 503 with the reason otherwise."""
    problem = health(read_status())
    if problem:
        return Response(f"not recording: {problem}\n", 503, mimetype="text/plain")
    return Response("ok: recording\n", 200, mimetype="text/plain")


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@bp.route("/metrics")
def metrics():
    """Counters and gauges in the Prometheus text format (0.0.4)."""
    s = read_status() or {}
    arch = s.get("archive") or {}
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, value: Any, labels: dict[str, Any] | None = None,
               header: bool = True) -> None:
        if value is None:
            return
        if header:
            lines.extend((f"# HELP flowtap_{name} {help_}", f"# TYPE flowtap_{name} {kind}"))
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in (labels or {}).items())
        text = str(int(value)) if isinstance(value, (bool, int)) else repr(float(value))
        lines.append(f"flowtap_{name}{{{lab}}} {text}" if lab else f"flowtap_{name} {text}")

    metric("recording", "gauge", "1 while the recorder is recording with a fresh status.",
           int(health(s or None) is None))
    metric("status_age_seconds", "gauge", "Age of the recorder's status snapshot.", s.get("age"))
    metric("packets_total", "counter", "Packets seen since the recorder started.", s.get("packets"))
    metric("bytes_total", "counter", "Bytes seen since the recorder started.", s.get("bytes"))
    metric("kernel_drops_total", "counter", "Packets the kernel dropped before capture.", s.get("kernel_drops"))
    metric("interface_drops_total", "counter", "Packets the interfaces dropped.", s.get("interface_drops"))
    metric("sessions_active", "gauge", "Sessions open in the flow table.", s.get("flows_active"))
    metric("sessions_evicted_total", "counter", "Sessions evicted from a full flow table.", s.get("flows_evicted"))
    metric("records_written_total", "counter", "Session records written to archives.", s.get("records_written"))
    metric("records_lost_total", "counter", "Session records lost to a refusing disk.", s.get("records_lost"))
    metric("archive_bytes", "gauge", "Bytes used by archives.", arch.get("archive_bytes"))
    metric("archives", "gauge", "Archive files kept.", arch.get("archives"))
    metric("filesystem_bytes", "gauge", "Size of the archive filesystem.", arch.get("fs_bytes"))
    metric("filesystem_free_bytes", "gauge", "Free bytes on the archive filesystem.", arch.get("fs_free"))
    metric("uptime_seconds", "gauge", "Seconds since the recorder started.", s.get("uptime"))
    for i, port in enumerate(s.get("interfaces") or []):
        metric("interface_up", "gauge", "1 when the port's link is up.",
               int(port.get("operstate") == "up"), {"interface": port.get("name")}, header=i == 0)
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4; charset=utf-8")
