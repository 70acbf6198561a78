"""What a first-time operator missed on the admin page (issue 15): Tokens in the navigation, the
archive state without a recorder, stale status marked, the recorder's open sessions on the Live
page (from a status.json the real Recorder wrote), units and defaults on the config page, and the
markup the page's script and the phone layout rely on. Flask's test client over real archives."""
from __future__ import annotations

import contextlib
import html
import json
import re
import shutil
import time
import tomllib
from pathlib import Path

import pytest
from flask import render_template_string

from appliance import archive, capture, config, recorder
from appliance.web import create_app, dashboard, settings
from conftest import record_captures
from pcapgen import merge, tcp_session, udp_exchange, write_pcap

PASSWORD = "amber lights on a quiet tap 7"
CAPTURES = ["basic/dpkt-http.pcap", "basic/pcpp-dns.pcap"]


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(pcaps_dir, tmp_path_factory) -> Path:
    """A data directory whose archive/ holds real captures recorded by the Recorder (closed)."""
    return record_captures(pcaps_dir, tmp_path_factory, CAPTURES)


@pytest.fixture
def config_path(tmp_path) -> Path:
    path = tmp_path / "flowtap.toml"
    path.write_text('[sensor]\nid = "tap1"\n\n[archive]\nsize_cap = 1073741824\n')
    return path


@pytest.fixture
def app(config_path, data_dir, runtime_dir):
    return create_app(config_path=config_path, data_dir=str(data_dir), runtime_dir=str(runtime_dir),
                      settings={"TESTING": True})


def csrf(client, url: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', client.get(url).text)
    assert m
    return m.group(1)


@pytest.fixture
def admin(app):
    """A client logged in as admin (the password set through the setup page)."""
    client = app.test_client()
    token = (Path(app.instance_path) / "setup-token").read_text().strip()
    r = client.post("/setup", data={"csrf_token": csrf(client, "/setup"), "token": token,
                                    "password": PASSWORD, "confirm": PASSWORD})
    assert r.status_code == 302, r.text
    return client


def by_id(text: str, element_id: str) -> str:
    """The text inside the element with that id (tags dropped, entities decoded)."""
    m = re.search(rf'<(\w+)[^>]* id="{element_id}"[^>]*>(.*?)</\1>', text, re.S)
    assert m, f"no #{element_id}"
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(2))).strip()


def clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def info(path: Path) -> dict:
    """A closed archive's info table."""
    with contextlib.closing(archive.open_readonly(path)) as conn:
        return archive.read_info(conn)


def table_rows(text: str, table_id: str) -> list[list[str]]:
    """The cells of a table's body rows, as text."""
    table = re.search(rf'<table[^>]* id="{table_id}">(.*?)</table>', text, re.S).group(1)
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
             for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)]


def open_capture(tmp_path: Path) -> Path:
    """A capture whose sessions are still open at its end: three TCP downloads and a UDP stream."""
    sessions = [tcp_session("10.0.0.1", "198.18.0.1", 40001, 443, [300], [50_000], close="none"),
                tcp_session("10.0.0.2", "198.18.0.2", 40002, 80, [200], [9_000], close="none"),
                tcp_session("2001:db8::1", "2001:db8::2", 40003, 22, [100], [3_000], close="none"),
                udp_exchange("10.0.0.3", "198.18.0.3", 40004, 53, [60] * 3, [120] * 3)]
    path = tmp_path / "open.pcap"
    write_pcap(path, merge(*sessions))
    return path


def recorder_status(pcap: Path, data_dir: Path, runtime_dir: Path) -> dict:
    """status.json as the live recorder writes it (Recorder.write_status), its top_sessions taken
    from the flow table the way record_live does, with the capture's sessions still open."""
    cfg = config.replace_section(config.override(config.Config(), data_dir=str(data_dir)), "archive",
                                 min_free_percent=0.0)
    cfg = config.replace_section(cfg, "sensor", id="tap1")
    rec = recorder.Recorder(cfg, runtime_dir=str(runtime_dir))
    writer = rec._writer("br0")
    rec.live = recorder.LiveState(["br0"])
    try:
        with capture.Capture.open_file(str(pcap), cfg.flows) as cap:
            while cap.poll() != capture.lib.SENSOR_EOF:
                pass
            rec.live.top = cap.top_flows(recorder.TOP_SESSIONS, cfg.sensor.id)
            rec.write_status(cap, writer)
    finally:
        writer.close(time.time())
    return json.loads((runtime_dir / "status.json").read_text())


def write_status(runtime_dir: Path, **over) -> dict:
    """A small status.json in the recorder's format (fresh, recording)."""
    now = time.time()
    doc = {"version": "0.1.0", "sensor_id": "tap1", "state": "recording", "since": now - 100, "time": now,
           "uptime": 100.0, "pid": 999999, "bpf": "", "interfaces": [], "packets": 10, "bytes": 1000,
           "kernel_drops": 0, "flows_active": 3, "records_written": 5, "pps": 1.0, "bps": 8.0, "rates": [],
           "archive": {"archive_bytes": 1, "archives": 1, "fs_bytes": 100, "fs_free": 50, "current": None},
           "clock_synced": True, "top_sessions": []}
    doc.update(over)
    (runtime_dir / "status.json").write_text(json.dumps(doc))
    return doc


# --- navigation and the page skeleton ------------------------------------------------------------

def test_tokens_is_in_the_navigation(admin):
    nav = re.search(r"<nav>(.*?)</nav>", admin.get("/").text, re.S).group(1)
    assert '<a href="/tokens">Tokens</a>' in nav
    page = admin.get("/tokens").text
    assert '<a href="/tokens" aria-current="page">Tokens</a>' in page


def test_pages_can_add_to_the_head(app):
    """base.html's head block: a page links its own CSS and scripts there (CSP: no inline ones)."""
    with app.test_request_context("/"):
        page = render_template_string('{% extends "base.html" %}{% block head %}'
                                      '<link rel="stylesheet" href="/static/x.css">{% endblock %}')
    head = page.split("</head>")[0]
    assert '<link rel="stylesheet" href="/static/x.css">' in head
    assert head.index("style.css") < head.index("x.css")          # a page's CSS can override


def test_the_script_hooks_are_in_place(admin, runtime_dir):
    """What static/app.js needs: the part it refreshes, its URL, the hidden stale banner."""
    page = admin.get("/").text
    assert '<div id="panel" data-refresh="/dashboard/panel">' in page
    live = admin.get("/live").text
    assert '<div id="live-panel" data-refresh="/live/panel">' in live
    for text in (page, live):
        banner = re.search(r'<p id="stale"[^>]*>.*?</p>', text, re.S).group(0)
        assert " hidden>" in banner and 'id="stale-since"' in banner
        assert "not updated since" in banner and "(the page cannot reach the sensor)" in banner
        assert '<meta http-equiv="refresh"' in text and "<noscript>" in text   # no script: reloads
    with admin.get("/static/app.js") as r:
        script = r.text
    for hook in ('"panel"', '"live-panel"', '"stale"', '"stale-since"', "X-Flowtap-Fragment", "redirected"):
        assert hook in script


def test_fragments_are_marked_and_a_login_page_is_not(admin, app):
    """The script swaps in only an answer carrying the fragment header: after a logout the
    refresh gets the login page (a redirect), which must never replace the panel."""
    for url, name in (("/dashboard/panel", "panel"), ("/live/panel", "live-panel")):
        r = admin.get(url)
        assert r.status_code == 200 and r.headers["X-Flowtap-Fragment"] == name
        assert "<html" not in r.text
    stranger = app.test_client()
    for url in ("/dashboard/panel", "/live/panel"):
        r = stranger.get(url)
        assert r.status_code == 302 and "/login" in r.location
        assert "X-Flowtap-Fragment" not in r.headers
        followed = stranger.get(url, follow_redirects=True)
        assert "X-Flowtap-Fragment" not in followed.headers


# --- the dashboard without a recorder, and a stale one -------------------------------------------

def test_dashboard_without_a_recorder_shows_the_archive_state(admin, data_dir):
    paths = archive.list_archives(data_dir / "archive")
    assert len(paths) >= 1
    page = admin.get("/").text
    assert "Not recording: no status from the recorder" in by_id(page, "state")
    assert "The last archive was written at" in by_id(page, "state")
    assert by_id(page, "disk-archives") == str(len(paths))
    used = sum(p.stat().st_size + (Path(f"{p}-wal").stat().st_size if Path(f"{p}-wal").exists() else 0)
               for p in paths)
    assert by_id(page, "disk-bytes") == dashboard.human_bytes(used)
    fs = shutil.disk_usage(data_dir / "archive")
    shown_free, _, share = by_id(page, "disk-free").partition("B ")
    assert f"% of {dashboard.human_bytes(fs.total)}" in share
    assert shown_free.split()[-1] == dashboard.human_bytes(fs.free).split()[-1][:-1]    # the same unit
    assert by_id(page, "disk-oldest") == clock(info(paths[0])["first_stime"])
    assert by_id(page, "disk-newest") == clock(info(paths[-1])["last_ltime"])
    assert paths[-1].name in by_id(page, "disk-last")
    assert by_id(page, "disk-last").startswith(
        time.strftime("%Y-%m-%d %H:%M", time.localtime(paths[-1].stat().st_mtime)))


def test_dashboard_with_no_archive_directory(admin, data_dir):
    shutil.rmtree(data_dir / "archive")
    page = admin.get("/")
    assert page.status_code == 200
    assert by_id(page.text, "disk-archives") == "0" and by_id(page.text, "disk-newest") == "–"
    assert "cannot read" in by_id(page.text, "disk-error")


def test_stale_status_is_marked(admin, runtime_dir):
    write_status(runtime_dir, time=time.time() - 125)
    for page in (admin.get("/").text, admin.get("/dashboard/panel").text):
        state = by_id(page, "state")
        assert state.startswith("Not recording: the recorder's status is 125 s old")
        assert "has not reported since" in state and "2m 5s ago" in state
        assert "not live" in by_id(page, "status-stale")
        assert '<div id="recorder-figures" class="stale">' in page
    write_status(runtime_dir)
    page = admin.get("/dashboard/panel").text
    assert by_id(page, "state").startswith("Recording") and 'id="status-stale"' not in page
    assert '<div id="recorder-figures">' in page


# --- the Live page: the recorder's open sessions -------------------------------------------------

def test_live_page_lists_the_recorders_open_sessions(admin, data_dir, runtime_dir, tmp_path):
    status = recorder_status(open_capture(tmp_path), data_dir, runtime_dir)
    top = status["top_sessions"]
    assert len(top) == 4 and all(r["cause"] == "Start" for r in top)
    for url in ("/live", "/live/panel"):
        page = admin.get(url).text
        rows = table_rows(page, "open-sessions")
        assert [r[3] for r in rows] == [r["saddr"] for r in top]            # the recorder's order: by bytes
        assert [r[3] for r in rows][:2] == ["10.0.0.1", "10.0.0.2"]
        first = rows[0]
        assert first[2] == "tcp" and first[4] == "40001" and first[6] == "198.18.0.1" and first[7] == "443"
        assert first[9] == f"{top[0]['bytes']:,}" and first[8] == f"{top[0]['pkts']:,}"
        assert [rows[3][2], rows[3][7]] == ["udp", "53"]
        assert [rows[2][2], rows[2][3]] == ["tcp", "2001:db8::1"]
        snapshot = by_id(page, "open-snapshot")
        assert clock(status["time"]) in snapshot
        assert "does not publish" not in page


def test_live_page_without_a_recorder(admin):
    page = admin.get("/live/panel").text
    assert "Not recording: no status from the recorder" in by_id(page, "live-state")
    assert "no open sessions reported" in page


def test_hostile_open_sessions_are_bounded_and_escaped(admin, runtime_dir):
    """status.json is parsed, not trusted: odd types, markup and a huge list cannot break the page
    or make it unbounded."""
    evil = {"saddr": "<script>alert(1)</script>", "daddr": "x" * 10_000, "proto": "tcp", "sport": "80",
            "dport": float("nan"), "pkts": True, "bytes": 10**400, "stime": "yesterday", "dur": None,
            "dir": {"a": 1}, "state": 7}
    rows = [evil, "not a record", None, 17] + [{"saddr": f"10.1.{i // 256}.{i % 256}", "proto": 17,
                                               "pkts": 1, "bytes": 10_000 - i} for i in range(10_000)]
    write_status(runtime_dir, top_sessions=rows, archive={"current": ["not", "a", "name"]})
    r = admin.get("/live/panel")
    assert r.status_code == 200
    rows = table_rows(r.text, "open-sessions")
    assert len(rows) == dashboard.OPEN_SESSIONS_SHOWN - 3         # the dicts among the first 64
    assert "<script>" not in r.text and "&lt;script&gt;" in r.text
    assert "x" * (dashboard.TEXT_LIMIT + 1) not in r.text
    start, _dur, proto, saddr, sport, _dir, _daddr, dport, pkts, nbytes, state = rows[0]
    assert (start, proto, saddr, sport, dport, pkts, nbytes, state) == (
        "–", "", "<script>alert(1)</script>", "", "", "–", "–", "")
    for junk in ({"top_sessions": "everything"}, {"top_sessions": {"a": 1}}, {"top_sessions": None}):
        write_status(runtime_dir, **junk)
        assert "no open sessions reported" in admin.get("/live/panel").text


# --- the config page: units, defaults, changed ----------------------------------------------------

def field(page: str, name: str) -> str:
    """The text of one field's label on the config page."""
    m = re.search(rf'<label data-field="{re.escape(name)}">(.*?)</label>', page, re.S)
    assert m, name
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", m.group(1))).split())


def test_config_shows_units_defaults_and_what_changed(admin):
    page = admin.get("/config").text
    size = field(page, "archive.size_cap")
    assert "bytes = 1 GiB" in size and "default: 536,870,912 bytes (512 MiB)" in size
    assert "changed" in size
    assert re.search(r'<span class="bigger" title="1073741824 bytes">= 1 GiB</span>', page)
    rotate = field(page, "archive.rotate_interval")
    assert "seconds = 1 h" in rotate and "default: 3,600 seconds (1 h)" in rotate and "changed" not in rotate
    tcp = field(page, "flows.timeout_tcp")
    assert "seconds = 1 min" in tcp and "default: 60 seconds (1 min)" in tcp and "changed" not in tcp
    free = field(page, "archive.min_free_percent")
    assert "%" in free and "default: 15%" in free and "changed" not in free
    assert "default: 0 bytes" in field(page, "archive.quota_bytes")
    assert "changed" in field(page, "sensor.id")                      # tap1, not the host name
    assert "default: (empty)" in field(page, "capture.bpf") and "changed" not in field(page, "capture.bpf")
    assert page.count('<span class="changed" title="default:') == 2
    assert '<input name="archive.size_cap" value="1073741824"' in page    # the form still takes raw numbers


def test_config_saving_is_unchanged_and_a_refused_value_is_shown_as_typed(admin, config_path):
    page = admin.get("/config").text
    values = dict(re.findall(r'<input name="([a-z_]+\.[a-z_]+)" value="([^"]*)"', page))
    values["csrf_token"] = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    values.update({"archive.size_cap": "536870912", "archive.max_age": "604800"})
    r = admin.post("/config", data=values, follow_redirects=True)
    assert r.status_code == 200, r.text
    data = tomllib.loads(config_path.read_text())
    assert data["archive"]["size_cap"] == 536870912 and data["archive"]["max_age"] == 604800
    assert "changed" not in field(r.text, "archive.size_cap")
    assert "= 7 days" in field(r.text, "archive.max_age") and "changed" in field(r.text, "archive.max_age")
    before = config_path.read_bytes()
    for junk in ("512M<b>", "1e999", "-0x10", " ", "9" * 400, "-" + "9" * 4000):
        values["archive.size_cap"] = junk
        r = admin.post("/config", data=values)
        assert r.status_code == 400 and "archive.size_cap: must be" in r.text
        shown = field(r.text, "archive.size_cap")
        assert "changed" in shown and " = " not in shown and "<b>" not in r.text
    assert config_path.read_bytes() == before


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1,023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
                                     (512 * 2**20, "512 MiB"), (2**30 + 1, "1 GiB"), (5 * 2**50, "5 PiB"),
                                     (1100 * 2**50, "1,100 PiB")])
def test_binary_bytes(n, text):
    assert settings.binary_bytes(n) == text


@pytest.mark.parametrize("n, text", [(0, "0 s"), (59, "59 s"), (60, "1 min"), (90, "1 min 30 s"),
                                     (3600, "1 h"), (86_400, "1 day"), (3650 * 86_400, "3,650 days"),
                                     (90_061, "1 day 1 h 1 min 1 s")])
def test_spoken_seconds(n, text):
    assert settings.spoken_seconds(n) == text


# --- phone layout: wide tables scroll inside their own box ----------------------------------------

def test_wide_tables_scroll_inside_their_own_box(admin, runtime_dir):
    write_status(runtime_dir, top_sessions=[{"saddr": "10.0.0.1", "proto": 6, "pkts": 1, "bytes": 2}])
    for url in ("/", "/live", "/archives"):
        page = admin.get(url).text
        tables = page.count("<table")
        assert tables and page.count('<div class="scroll') >= tables, url
    with admin.get("/static/style.css") as r:
        css = r.text
    phone = css[css.index("@media (max-width: 40rem)"):]
    for rule in (".scroll {", "td.downloads { position: sticky", ".inline-form { flex-direction: column",
                 ".stack button"):
        assert rule in phone, rule
