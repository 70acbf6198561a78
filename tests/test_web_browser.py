"""The admin page in a real headless Chromium against a real recorder on a bridge in namespaces, as
a first-time operator walks it at 1280×800 and then on a 390×844 phone: setup token → password (a
weak one refused) → logout (a copied cookie dies) → login → live dashboard (stale when its refreshes
fail) → open sessions → config change reloads the recorder → search (quick range, count,
click-to-filter, record detail) → IDS alerts on the recorded sessions (list, detail, around view,
its CSV) → API token (copy, scope, revoke after confirmation) → archive download. Screenshots
go to docs/screenshots/ with FLOWTAP_SCREENSHOTS=1 (else a temporary folder).

Needs root (namespaces), Debian's ``chromium`` and Python's ``playwright``; without them it fails.
"""
from __future__ import annotations

import csv
import http.client
import importlib.util
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import netlab
from appliance.netlab import Lab

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "browser test password"
NEW_BPF = "not port 9"

pytestmark = pytest.mark.live


def require() -> None:
    """Fail, never skip: CI is root and installs chromium and playwright."""
    if os.geteuid() != 0:
        pytest.fail("the browser test needs root (network namespaces and a bridge)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    if importlib.util.find_spec("playwright") is None:
        pytest.fail("Python's playwright is missing: pip install playwright (never `playwright install`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go."""
    if os.environ.get("FLOWTAP_SCREENSHOTS") == "1":
        out = REPO / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path


@pytest.fixture
def sensor(tmp_path):
    """A bridge lab with the real recorder on br0, demo traffic through it and `flowtap web` in the
    root namespace; yields (base URL, setup token, paths)."""
    require()
    flowtap = str(Path(sys.executable).with_name("flowtap"))
    cfg, data, run = tmp_path / "flowtap.toml", tmp_path / "data", tmp_path / "run"
    cfg.write_text('[sensor]\nid = "browser-test"\n\n[archive]\nmin_free_percent = 0.0\ncommit_interval = 1.0\n')
    procs: list[subprocess.Popen] = []
    logs = []

    def start(argv: list[str], name: str, ns: str | None = None, **kw) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        logs.append(log)
        argv = lab.cmd(ns, *argv) if ns else argv
        kw.setdefault("stdout", log)
        p = subprocess.Popen(argv, stderr=log, cwd=REPO, **kw)
        procs.append(p)
        return p

    with Lab(prefix=f"ftweb{os.getpid() % 10000}") as lab:
        try:
            start([flowtap, "record", "-c", str(cfg), "-i", lab.bridge, "-d", str(data),
                   "--runtime-dir", str(run), "-q"], "recorder", lab.tap)
            start([sys.executable, "-m", "appliance.demo", "server"], "server", lab.h2)
            time.sleep(0.5)
            start([sys.executable, "-m", "appliance.demo", "client", lab.addr["h2"], lab.addr6["h2"]],
                  "client", lab.h1)
            port = free_port()
            web = start([flowtap, "web", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir",
                         str(data), "--runtime-dir", str(run)], "web", stdout=subprocess.PIPE, text=True)
            line = web.stdout.readline()
            token = re.search(r"setup token: (\S+)", line)
            assert token, f"no setup token printed: {line!r} ({(tmp_path / 'web.log').read_text()})"
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: (run / "status.json").exists(), 20, "the recorder's status.json")
            yield base, token.group(1), {"data": data, "cfg": cfg, "run": run, "tmp": tmp_path}
        finally:
            netlab.stop(procs)
            for p in procs:
                if p.stdout:
                    p.stdout.close()
            for log in logs:
                log.close()


def import_alerts(archive_dir: Path) -> dict:
    """Alerts on sessions the recorder wrote (an HTTP transfer and a DNS query of the demo), imported
    beside its archives as `flowtap alerts import` does; returns the HTTP session."""
    from appliance import alerts, filter as flt, query
    from appliance.alert_types import Alert

    def done(expr: str) -> dict | None:
        recs = [r for r in query.read_records(archive_dir, flt.parse(expr)) if r["cause"] != "Status"]
        return recs[len(recs) // 2] if recs else None
    http = wait_for(lambda: done("tcp and dst port 8080"), 20, "a recorded HTTP session")
    dns = wait_for(lambda: done("udp and dst port 5353"), 20, "a recorded DNS session")
    raw = iter(range(1000))

    def alert(rec: dict, sid: int, msg: str, priority: int, **kw) -> Alert:
        return Alert(time=rec["stime"] + 0.01, gid=1, sid=sid, rev=2, msg=msg, proto=rec["proto"],
                     saddr=rec["saddr"], sport=rec["sport"], daddr=rec["daddr"], dport=rec["dport"],
                     format="eve", raw=f"browser test alert {next(raw)}", priority=priority, **kw)
    result = alerts.import_alerts(archive_dir, [
        alert(http, 2100498, "<script>alert(1)</script> GPL ATTACK_RESPONSE id check returned root", 1,
              classification="Potentially Bad Traffic", community_id=http["community_id"],
              app_proto="http", action="allowed"),
        alert(http, 2013504, "ET POLICY GNU/Linux APT User-Agent Outbound", 2,
              classification="Not Suspicious Traffic"),
        alert(dns, 2027863, "ET INFO Observed DNS Query to .pw TLD", 3,
              classification="Potentially Bad Traffic")])
    assert result.imported == 3 and result.linked == 3, result
    return http


def alerts_in_browser(page, base: str, paths: dict, shots: Path) -> None:
    """Alerts imported for recorded sessions: the Alerts page lists them, the detail shows the
    linked session, the around view its neighbours and their CSV; messages stay text."""
    from appliance import archive

    http = import_alerts(paths["data"] / "archive")
    page.click("nav >> text=Alerts")
    page.wait_for_url(re.compile(r".*/alerts$"))
    assert page.text_content("#alerts-total").strip() == "3 alerts"
    rows = page.locator("table.alerts tbody tr")
    assert rows.count() == 3
    messages = page.locator("table.alerts td.msg").all_text_contents()
    assert "<script>alert(1)</script> GPL ATTACK_RESPONSE id check returned root" in messages
    assert page.locator("table.signatures tbody tr").count() == 3
    page.screenshot(path=str(shots / "alerts.png"), full_page=True)

    # narrow to one signature through its count, then open the alert
    page.locator("table.signatures a", has_text="1:2100498:2").click()
    page.wait_for_url(re.compile(r".*sid=2100498.*"))
    assert page.locator("table.alerts tbody tr").count() == 1
    page.locator("table.alerts a", has_text="details").click()
    page.wait_for_url(re.compile(r".*/alerts/[0-9a-f]{16}$"))
    assert page.text_content("h1 .msg").startswith("<script>alert(1)</script>")
    assert http["community_id"] and page.text_content("#community-id") == http["community_id"]
    linked = page.locator("#linked-sessions tbody tr").first.locator("td").all_text_contents()
    assert linked[2] == "tcp" and linked[4] == str(http["sport"]) and linked[7] == "8080"
    page.screenshot(path=str(shots / "alert.png"), full_page=True)

    # the around view: the linked session is marked; its badge counts its two alerts
    page.click("#around-link")
    page.wait_for_url(re.compile(r".*/around\?s=900$"))
    marked = page.locator("table.sessions tr.linked")
    assert marked.count() >= 1
    assert marked.first.locator("a.badge").text_content() == "2"
    assert page.locator("table.sessions tbody tr").count() > 1
    page.screenshot(path=str(shots / "alert-around.png"), full_page=True)
    with page.expect_download() as info:
        page.click("#around-csv")
    saved = paths["tmp"] / "around.csv"
    info.value.save_as(saved)
    with saved.open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == list(archive.FLOW_NAMES) and len(table) > 2
    names = table[0]
    assert any(row[names.index("sport")] == str(http["sport"]) and row[names.index("dport")] == "8080"
               for row in table[1:])

    # the dashboard counts the last hour's alerts
    page.click("nav >> text=Dashboard")
    assert page.text_content("#alerts-hour") == "3 alerts"


def packets(page) -> int:
    return int(page.text_content("#packets").replace(",", ""))


DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
RA_RANGE = re.compile(r"^\d{4}/\d\d/\d\d\.\d\d:\d\d:\d\d-\d{4}/\d\d/\d\d\.\d\d:\d\d:\d\d$")


def dashboard_in_browser(page, shots: Path, suffix: str = "") -> None:
    """The dashboard is live (the packet count grows without a reload), draws its rate chart, and
    marks itself stale while its refreshes fail (here: the browser refuses them), then recovers."""
    page.wait_for_function("() => document.querySelector('#state').textContent.includes('Recording')",
                           timeout=20_000)
    first = packets(page)
    page.wait_for_function("n => parseInt(document.querySelector('#packets').textContent.replace(/,/g, '')) > n",
                           arg=first, timeout=20_000)
    assert "br0" in page.text_content("#state")
    assert int(page.text_content("#disk-archives").split()[0]) >= 1       # read from the archive directory
    page.wait_for_function("() => (document.querySelector('svg.chart polyline')?.getAttribute('points') || '')"
                           ".split(' ').length >= 2", timeout=40_000)
    page.screenshot(path=str(shots / f"dashboard{suffix}.png"), full_page=not suffix)
    if suffix:
        return
    page.route("**/dashboard/panel*", lambda route: route.abort())
    page.wait_for_selector("#stale", state="visible", timeout=20_000)
    assert "not updated since" in page.text_content("#stale")
    assert "stale" in page.get_attribute("#panel", "class")
    page.screenshot(path=str(shots / "dashboard-stale.png"))
    page.unroute("**/dashboard/panel*")
    page.wait_for_selector("#stale", state="hidden", timeout=20_000)


def search_in_browser(page, base: str, shots: Path, suffix: str = "") -> None:
    """Search as a first-time operator: the quick range writes ra's syntax, the count, a click on
    an address narrows the filter, a row's detail shows every field."""
    page.click("nav >> text=Search")
    assert "UTC" in page.text_content("#data-span")

    def found() -> bool:
        page.click("#picker button[data-last='3600']")
        assert RA_RANGE.match(page.input_value("#search-t")), page.input_value("#search-t")
        page.fill("input[name=filter]", "tcp and port 8080")
        page.click("#search-form button[type=submit]")
        page.wait_for_load_state()
        return "8080" in (page.text_content("table.sessions tbody") or "")
    wait_for(found, 30, "search results for tcp and port 8080")
    count = page.text_content("#result-count")
    assert re.match(r"^[\d,]+ sessions?; rows 1–", count), count
    head = [h.strip() for h in page.locator("table.sessions thead th").all_text_contents()]
    cells = page.locator("table.sessions tbody tr").first.locator("td").all_text_contents()
    row = dict(zip(head, cells))
    assert head[0].startswith("stime") and "(UTC)" in head[0]
    assert row["proto"] == "tcp" and "8080" in (row["sport"], row["dport"])
    page.screenshot(path=str(shots / f"search{suffix}.png"), full_page=not suffix)

    # click-to-filter: the client's address joins the filter, every row then has it
    client = row["saddr"]
    page.locator("table.sessions tbody tr").first.locator("a.refine", has_text=client).first.click()
    page.wait_for_load_state()
    assert f"host {client}" in page.input_value("input[name=filter]")
    rows = page.locator("table.sessions tbody tr")
    assert rows.count() >= 1
    assert all(client in text for text in rows.all_text_contents())

    # the row's detail: every field of the record
    rows.first.locator("a.detail").first.click()
    page.wait_for_url(re.compile(r".*/search/record/flows-\d{8}T\d{6}Z\.sqlite/\d+"))
    fields = dict(zip(page.locator("#record th").all_text_contents(),
                      page.locator("#record td").all_text_contents()))
    assert fields["saddr"].strip() == client and fields["proto"].strip() == "tcp"
    assert {"community_id", "state", "spkts", "dpkts"} <= set(fields)
    page.screenshot(path=str(shots / f"search-record{suffix}.png"), full_page=not suffix)

    # a bad filter names its position
    page.click("#back")
    page.fill("input[name=filter]", "tcp and prt 8080")
    page.click("#search-form button[type=submit]")
    assert "column 9" in page.text_content("#search-error")


def tokens_in_browser(page, base: str, shots: Path) -> None:
    """A metrics token: made once (a reload makes no second one), copied with the button, opens
    /metrics and nothing else, revoked only after the confirmation step."""
    page.click("nav >> text=Tokens")
    page.fill("input[name=name]", "prometheus")
    page.select_option("select[name=scope]", "metrics")
    page.click("main form.stack button[type=submit]")
    page.wait_for_url(base + "/tokens")
    secret = page.text_content("#token-secret").strip()
    page.click("#copy-token")
    page.wait_for_function("() => document.querySelector('#copy-result').textContent === 'Copied.'")
    assert page.evaluate("() => navigator.clipboard.readText()") == secret
    page.screenshot(path=str(shots / "tokens.png"), full_page=True)

    def get(path: str, token: str) -> int:
        """The status of a GET with the token, redirects not followed (a page sends to /login)."""
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            return conn.getresponse().status
        finally:
            conn.close()
    assert get("/metrics", secret) == 200
    assert get("/config", secret) == 302                  # a token never opens a page

    page.reload()
    assert page.locator("#token-secret").count() == 0     # shown once
    assert page.locator("main table tbody tr", has_text="prometheus").count() == 1

    page.click("main table button.danger")                # Revoke… asks first
    assert page.text_content("h1").startswith("Revoke the token prometheus")
    page.screenshot(path=str(shots / "token-revoke.png"))
    page.click("a.cancel")
    assert page.locator("main table tbody tr", has_text="prometheus").count() == 1
    assert get("/metrics", secret) == 200
    page.click("main table button.danger")
    page.click("main form.inline button.danger")
    page.wait_for_url(re.compile(r".*/tokens$"))
    assert page.locator("main table tbody tr", has_text="prometheus").count() == 0
    assert get("/metrics", secret) == 401


# What sticks out on the right: the diagnosis of a page that scrolls sideways.
WIDE_ELEMENTS = """() => [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
    .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""


def on_screen(page, selector: str, width: int) -> None:
    """Every element matching selector lies within the viewport's width (no sideways scrolling to
    reach an action)."""
    boxes = [el.bounding_box() for el in page.locator(selector).all()]
    assert boxes, f"nothing matches {selector}"
    for box in boxes:
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)


def phone_in_browser(browser, page, base: str, shots: Path) -> None:
    """The same operator on a phone: no page scrolls sideways, and the actions (search, downloads,
    token and config buttons, navigation) are on screen."""
    phone = browser.new_context(viewport=PHONE, device_scale_factor=2,
                                storage_state=page.context.storage_state()).new_page()
    try:
        phone.goto(base + "/")
        dashboard_in_browser(phone, shots, "-phone")
        for path, actions, name in (
                ("/", "header nav a", "dashboard"),
                ("/live", "#open-sessions", "live"),
                ("/search?t=&filter=tcp+and+port+8080", "#search-form button[type=submit], p.downloads a", "search"),
                ("/archives", "td.downloads a", "archives"),
                ("/tokens", "main form.stack button[type=submit]", "tokens"),
                ("/config", "main button[type=submit]", "config")):
            phone.goto(base + path)
            wide = phone.evaluate("() => document.documentElement.scrollWidth")
            assert wide <= PHONE["width"], (f"{path} scrolls sideways: {wide} px", phone.evaluate(WIDE_ELEMENTS))
            if name != "live":
                on_screen(phone, actions, PHONE["width"])
            if name != "dashboard":
                phone.screenshot(path=str(shots / f"{name}-phone.png"))
    finally:
        phone.context.close()
    # a first visit on the phone: the login page (setup looks the same: one form)
    visitor = browser.new_context(viewport=PHONE, device_scale_factor=2).new_page()
    try:
        visitor.goto(base + "/")
        assert "/login" in visitor.url
        assert visitor.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        on_screen(visitor, "main button[type=submit]", PHONE["width"])
        visitor.screenshot(path=str(shots / "login-phone.png"))
    finally:
        visitor.context.close()


def test_first_time_operator_walks_every_page(sensor, shots):
    """Setup, login, dashboard, live, config, search, alerts, tokens and archives at 1280×800, then
    the same pages at 390×844."""
    from playwright.sync_api import sync_playwright

    base, token, paths = sensor
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text)     # refused forms answer 4xx: fine
                    if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            # first start: the setup token buys the admin password; a weak one is refused
            page.goto(base + "/")
            assert page.url == base + "/setup"
            page.fill("input[name=token]", token)
            page.fill("input[name=password]", "aaaaaaaaaa")
            page.fill("input[name=confirm]", "aaaaaaaaaa")
            page.click("main button[type=submit]")
            assert page.url == base + "/setup" and page.locator(".error").count() == 1
            page.fill("input[name=token]", token)
            page.fill("input[name=password]", PASSWORD)
            page.fill("input[name=confirm]", PASSWORD)
            page.screenshot(path=str(shots / "setup.png"))
            page.click("main button[type=submit]")
            page.wait_for_url(base + "/")

            # log out: the old session is gone for good; log in again
            before = context.cookies()
            page.click("text=Log out")
            page.wait_for_url(re.compile(r".*/login"))
            stale = browser.new_context(viewport=DESKTOP)
            stale.add_cookies(before)
            copied = stale.new_page()
            copied.goto(base + "/config")
            assert "/login" in copied.url                # a copied cookie does not outlive logout
            stale.close()
            page.fill("input[name=password]", "wrong password")
            page.click("main button[type=submit]")
            assert "Wrong password" in page.text_content(".error")
            page.fill("input[name=password]", PASSWORD)
            page.screenshot(path=str(shots / "login.png"))
            page.click("main button[type=submit]")
            page.wait_for_url(base + "/")

            dashboard_in_browser(page, shots)

            # live: the recorder's open sessions
            page.click("nav >> text=Live")
            page.wait_for_function("() => document.querySelectorAll('#open-sessions tbody tr td').length >= 11",
                                   timeout=20_000)
            assert "Open sessions" in page.text_content("main")
            page.screenshot(path=str(shots / "live.png"), full_page=True)

            # change the BPF filter: the recorder reloads, the dashboard shows it, config marks it
            page.click("nav >> text=Config")
            assert "MiB" in page.text_content("main")                 # sizes with their units
            page.fill("input[name='capture.bpf']", "tcp prt 80")
            page.click("main button[type=submit]")
            assert "capture.bpf" in page.text_content("#config-errors")
            page.fill("input[name='capture.bpf']", NEW_BPF)
            page.click("main button[type=submit]")
            assert "was asked to reload" in page.text_content(".flash")
            assert f'bpf = "{NEW_BPF}"' in paths["cfg"].read_text()
            assert page.locator("label[data-field='capture.bpf'] .changed").count() == 1
            page.screenshot(path=str(shots / "config.png"), full_page=True)
            page.click("nav >> text=Dashboard")
            page.wait_for_function("bpf => document.querySelector('#bpf').textContent === bpf", arg=NEW_BPF,
                                   timeout=20_000)

            search_in_browser(page, base, shots)
            alerts_in_browser(page, base, paths, shots)
            tokens_in_browser(page, base, shots)

            # download an archive (the open one: a snapshot) and open it with sqlite3
            page.click("nav >> text=Archives")
            page.screenshot(path=str(shots / "archives.png"), full_page=True)
            with page.expect_download() as info:
                page.locator("td.downloads a", has_text="sqlite").first.click()
            saved = paths["tmp"] / "download.sqlite"
            info.value.save_as(saved)
            conn = sqlite3.connect(saved)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT count(*) FROM flows WHERE dport = 8080").fetchone()[0] > 0
            conn.close()

            phone_in_browser(browser, page, base, shots)
            assert not errors, errors                       # no CSP violation, no script error
        finally:
            browser.close()
