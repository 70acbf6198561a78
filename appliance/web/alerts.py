"""IDS alerts: the alerts page (a selection → a paged table and counts per signature), one alert
with the sessions it fired on, the "around" view (every session of either host near the alert,
as a page and as CSV) and what the dashboard and the session tables show of alerts.

Alerts are imported by ``flowtap alerts import`` into ``alerts-*.sqlite`` beside the archives;
``appliance.alerts`` reads them read-only and links them to session records at query time. Alert
messages and classifications come from outsiders (rule writers, or whoever crafted the traffic a
rule quotes): they reach the page only through Jinja's escaping, never ``Markup``.
"""
from __future__ import annotations

import ipaddress
import math
import time
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, url_for

from .. import alerts as _alerts
from .. import fields as _fields
from .. import filter as _filter
from .. import query
from . import archives as _archives
from . import limits, search

bp = Blueprint("alerts", __name__)

DEFAULT_RANGE = "-1h"
DEFAULT_AROUND = 900            # seconds either side of the alert
MAX_AROUND = 86_400
MAX_SID = 2**32 - 1             # sids and gids are 32-bit in Snort and Suricata
MAX_PRIORITY = 255
SIGNATURES = 20                 # rows of the counts per signature
MAX_IDS = 50                    # alerts a session's badge lists by id
# form field → longest value accepted
LIMITS = {"t": 200, "sid": 20, "host": 100, "priority": 20, "filter": search.MAX_FILTER}


def directory() -> str:
    return current_app.config["ARCHIVE_DIR"]


def deadline() -> float:
    return time.monotonic() + current_app.config["QUERY_TIME_LIMIT"]


def _unreadable(exc: OSError) -> str:
    """The alert store lives in the archive directory: what to say when it cannot be listed."""
    return _archives.unreadable_directory(directory(), exc)


def _timeout_message() -> str:
    limit = current_app.config["QUERY_TIME_LIMIT"]
    return f"the query took longer than {limit:g} s: narrow the time range or the filter"


# --- the form ------------------------------------------------------------------------------------

def time_bounds(span: str, now: float | None = None) -> tuple[float | None, float | None]:
    """``(lo, hi)`` Unix seconds of a ``-t`` range as the search page takes it (empty: all time).

    An alert is a moment, so the record-oriented prefixes make no sense for it: ``i`` and ``c``
    both mean "the alert's time lies in the range"; ``n`` and ``x`` are refused.

    :raises SearchError: field ``t``, with the column of a bad part.
    """
    span = span.strip()
    if not span:
        return None, None
    node = search.time_range(span, now)
    if not isinstance(node, _filter.And) or node.left.op == "le":
        raise search.SearchError("t", "an alert is a moment: give a plain range, without the x or "
                                      "n prefix", 1)
    values = (node.left.value, node.right.value)
    return min(values), max(values)


def _number(args: Any, name: str, high: int) -> int | None:
    raw = args.get(name, "").strip()
    if not raw:
        return None
    value = limits.whole_number(raw, 1, high)
    if value is None:
        raise search.SearchError(name, f"must be a whole number from 1 to {high}")
    return value


def _parse(text: str, field: str) -> Any:
    try:
        return _alerts.parse_filter(text)
    except _filter.FilterError as e:
        raise search.SearchError(field, e.message, e.position) from None


def selection(args: Any) -> dict[str, Any]:
    """The list functions' keyword arguments (``ast``, ``lo``, ``hi``, ``priority``) for the form.

    :raises SearchError: naming the field, with the column of a filter or time range error.
    """
    for name, most in LIMITS.items():
        if len(args.get(name, "")) > most:
            raise search.SearchError(name, f"too long (at most {most} characters)")
    lo, hi = time_bounds(args.get("t", DEFAULT_RANGE))
    sid = _number(args, "sid", MAX_SID)
    priority = _number(args, "priority", MAX_PRIORITY)
    parts = []
    if sid is not None:
        parts.append(_parse(f"sid {sid}", "sid"))
    host = args.get("host", "").strip()
    if host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise search.SearchError("host", "not an IP address or network (10.0.0.1, "
                                             "2001:db8::/32)") from None
        single = net.num_addresses == 1 and "/" not in host
        parts.append(_parse(f"host {net.network_address}" if single else f"net {net}", "host"))
    text = args.get("filter", "")
    if text.strip():
        parts.append(_parse(text, "filter"))
    ast = None
    for part in parts:
        ast = part if ast is None else _filter.And(ast, part)
    return {"ast": ast, "lo": lo, "hi": hi, "priority": priority}


def form_values(args: Any) -> dict[str, str]:
    """The form's fields as submitted (the time range defaults to the last hour)."""
    return {"t": args.get("t", DEFAULT_RANGE), "sid": args.get("sid", ""),
            "host": args.get("host", ""), "priority": args.get("priority", ""),
            "filter": args.get("filter", "")}


def _page_number(args: Any, size: int) -> int:
    raw, high = args.get("page", ""), search.MAX_ROWS // size
    if not raw:
        return 1
    value = limits.whole_number(raw, 1, high)
    if value is None:
        raise search.SearchError("page", f"must be a whole number from 1 to {high}")
    return value


# --- template helpers ----------------------------------------------------------------------------

@bp.app_template_filter("endpoint")
def _endpoint(addr: str | None, port: int | None = None) -> str:
    """``10.0.0.1:80``, ``[2001:db8::1]:443``, or the address alone without a port."""
    if not addr:
        return ""
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@bp.app_template_filter("signature")
def _signature(a: dict[str, Any]) -> str:
    return f"{a.get('gid')}:{a.get('sid')}:{a.get('rev')}"


@bp.app_template_global("alerts_link")
def alerts_link(rec: dict[str, Any], found: list[dict[str, Any]]) -> str:
    """Where a session row's alert badge leads: the alert itself, the alerts page showing just
    these alerts (``ids``), or for more than MAX_IDS, the alerts page narrowed to the session's
    endpoints over the span of its alerts (which may show a few more: same endpoints, no link)."""
    if len(found) == 1:
        return url_for("alerts.detail", alert_id=found[0]["id"])
    if len(found) <= MAX_IDS:
        return url_for("alerts.index", ids=",".join(a["id"] for a in found))
    times = [a["time"] for a in found]
    span = f"{math.floor(min(times))}-{math.floor(max(times)) + 1}"
    words = [f"host {rec['saddr']}", f"host {rec['daddr']}"]
    if rec.get("proto") in (6, 17, 132):
        words.insert(0, _fields.proto_name(rec["proto"]))
        if rec.get("sport") is not None and rec.get("dport") is not None:
            words += [f"port {rec['sport']}", f"port {rec['dport']}"]
    return url_for("alerts.index", t=span, filter=" and ".join(words))


def _listed(args: Any) -> list[dict[str, Any]] | None:
    """The alerts named by ``ids`` (comma-separated, at most MAX_IDS), in time order; None
    without ``ids``.

    :raises SearchError: field ``ids``.
    """
    raw = args.get("ids")
    if raw is None:
        return None
    ids = list(dict.fromkeys(raw.split(",")))
    if len(raw) > MAX_IDS * 17 or len(ids) > MAX_IDS or not all(_alerts.ID_RE.match(i) for i in ids):
        raise search.SearchError("ids", f"must be up to {MAX_IDS} alert ids (16 hexadecimal "
                                        "digits each) separated by commas")
    found = [a for a in (_alerts.find(directory(), i) for i in ids) if a is not None]
    return sorted(found, key=lambda a: (a["time"], a["id"]))


def _signature_counts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``alerts.signature_counts`` of a list already read."""
    return _alerts.count_signatures((a["gid"], a["sid"], a["rev"], a["msg"], a["priority"], 1)
                                    for a in rows)


def dashboard_summary() -> dict[str, Any]:
    """Alerts of the last hour: their number and the five most frequent signatures."""
    now = time.time()
    try:
        end = deadline()
        count = _alerts.count_alerts(directory(), lo=now - 3600, hi=now, deadline=end)
        top = _alerts.signature_counts(directory(), lo=now - 3600, hi=now, limit=5, deadline=end)
    except query.QueryTimeout:
        return {"count": None, "top": [], "error": _timeout_message()}
    except _alerts.AlertStoreError as e:
        return {"count": None, "top": [], "error": f"the alert store cannot be read: {e}"}
    except OSError as e:
        return {"count": None, "top": [], "error": _unreadable(e)}
    return {"count": count, "top": top, "error": None}


# --- pages ---------------------------------------------------------------------------------------

@bp.route("/alerts")
def index():
    """The form and, for its selection, a page of alerts and the counts per signature."""
    args = request.args
    size = current_app.config["PAGE_SIZE"]
    ctx: dict[str, Any] = {"form": form_values(args), "rows": [], "sessions": [], "total": None,
                           "signatures": [], "more": False, "page": 1, "error": None,
                           "listed": None, "top": SIGNATURES}
    status = 200
    try:
        ctx["page"] = _page_number(args, size)
        end = deadline()
        ctx["listed"] = listed = _listed(args)
        if listed is not None:
            ctx["rows"], ctx["total"], ctx["signatures"] = listed, len(listed), _signature_counts(listed)
        else:
            sel = selection(args)
            found = _alerts.list_alerts(directory(), **sel, limit=size + 1,
                                        offset=(ctx["page"] - 1) * size, deadline=end)
            ctx["rows"], ctx["more"] = found[:size], len(found) > size
            ctx["total"] = _alerts.count_alerts(directory(), **sel, deadline=end)
            ctx["signatures"] = _alerts.signature_counts(directory(), **sel, limit=SIGNATURES,
                                                         deadline=end)
        linked = _alerts.sessions_for(directory(), ctx["rows"], deadline=end)
        ctx["sessions"] = [len(linked[a["id"]]) for a in ctx["rows"]]
    except search.SearchError as e:
        ctx["error"], status = e, 400
    except query.QueryTimeout:
        ctx["error"], status = search.SearchError("", _timeout_message()), 503
    except _alerts.AlertStoreError as e:
        ctx["error"], status = search.SearchError("", f"the alert store cannot be read: {e}"), 500
    except OSError as e:
        ctx["error"], status = search.SearchError("", _unreadable(e)), 503
    return render_template("alerts.html", **ctx), status


def _alert(alert_id: str) -> dict[str, Any]:
    """The alert called ``alert_id`` (16 lower-case hex digits); 404 otherwise."""
    if not _alerts.ID_RE.match(alert_id):
        abort(404, "No such alert: an alert id is 16 hexadecimal digits.")
    try:
        alert = _alerts.find(directory(), alert_id)
    except OSError as e:
        abort(503, _unreadable(e))
    if alert is None:
        abort(404, "No such alert (it may have been removed with its archive).")
    return alert


def _around_seconds() -> int:
    raw = request.args.get("s", "")
    if not raw:
        return DEFAULT_AROUND
    value = limits.whole_number(raw, 1, MAX_AROUND)
    if value is None:
        abort(400, f"s: must be a whole number of seconds from 1 to {MAX_AROUND}.")
    return value


@bp.route("/alerts/<alert_id>")
def detail(alert_id: str):
    """Every field of one alert and the sessions it fired on."""
    alert = _alert(alert_id)
    error, status = None, 200
    try:
        sessions = _alerts.sessions_of(directory(), alert, deadline=deadline())
    except query.QueryTimeout:
        sessions, error, status = [], _timeout_message(), 503
    except _alerts.AlertStoreError as e:
        sessions, error, status = [], f"the linked sessions cannot be read: {e}", 500
    return render_template("alert.html", a=alert, sessions=sessions, error=error,
                           around=DEFAULT_AROUND), status


@bp.route("/alerts/<alert_id>/around")
def around(alert_id: str):
    """Every session of either host of the alert within ±s seconds of it, oldest first."""
    alert = _alert(alert_id)
    seconds = _around_seconds()
    size = current_app.config["PAGE_SIZE"]
    try:
        pageno = _page_number(request.args, size)
    except search.SearchError as e:
        abort(400, f"{e.field}: {e.message}.")
    ctx: dict[str, Any] = {"a": alert, "s": seconds, "page": pageno, "rows": [], "more": False,
                           "damaged": [], "found": [], "linked_error": None, "error": None}
    status = 200
    try:
        ctx["rows"], ctx["more"] = search.page(_alerts.around_ast(alert, seconds), "stime", False,
                                               (pageno - 1) * size, size, ctx["damaged"])
    except query.QueryTimeout:
        ctx["error"], status = _timeout_message(), 503
    ctx["found"], ctx["linked_error"] = search.linked_alerts(ctx["rows"])
    return render_template("around.html", **ctx), status


@bp.route("/alerts/<alert_id>/around.csv")
@limits.download_slot
def around_csv(alert_id: str):
    """The around view's whole result as CSV (search's columns), oldest first, streamed."""
    alert = _alert(alert_id)
    seconds = _around_seconds()
    return search.download_result(_alerts.around_ast(alert, seconds), "csv",
                                  f"flowtap-alert-{alert['id']}-around-{seconds}s.csv")
