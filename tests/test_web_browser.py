"""The admin page in a real headless Chromium against a real recorder on a bridge in namespaces:
setup token → password → login → live dashboard → config change reloads the recorder → search →
IDS alerts on the recorded sessions (list, detail, around view, its CSV) → download. Screenshots
go to docs/screenshots/ with FLOWTAP_SCREENSHOTS=1 (else a temporary folder).

Needs root (namespaces), Debian's ``chromium`` and Python's ``playwright``; without them it fails.
"""
from __future__ import annotations

import csv
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


def test_setup_login_dashboard_config_search_download(sensor, shots):
    from playwright.sync_api import sync_playwright

    base, token, paths = sensor
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1200, "height": 900},
                                       accept_downloads=True).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text)     # refused forms answer 4xx: fine
                    if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            # first start: the setup token buys the admin password
            page.goto(base + "/")
            assert page.url == base + "/setup"
            page.fill("input[name=token]", token)
            page.fill("input[name=password]", PASSWORD)
            page.fill("input[name=confirm]", PASSWORD)
            page.screenshot(path=str(shots / "setup.png"))
            page.click("main button[type=submit]")
            page.wait_for_url(base + "/")

            # log out, log in again
            page.click("text=Log out")
            page.wait_for_url(re.compile(r".*/login"))
            page.fill("input[name=password]", "wrong password")
            page.click("main button[type=submit]")
            assert "Wrong password" in page.text_content(".error")
            page.fill("input[name=password]", PASSWORD)
            page.screenshot(path=str(shots / "login.png"))
            page.click("main button[type=submit]")
            page.wait_for_url(base + "/")

            # the dashboard is live: the packet count grows without a reload (the script's refresh)
            page.wait_for_function("() => document.querySelector('#state').textContent.includes('Recording')",
                                   timeout=20_000)
            first = packets(page)
            page.wait_for_function("n => parseInt(document.querySelector('#packets').textContent.replace(/,/g, '')) > n",
                                   arg=first, timeout=20_000)
            assert "br0" in page.text_content("#state")
            assert page.text_content("#bpf").startswith("(none")
            # the rate chart draws once the recorder has two 10-second samples
            page.wait_for_function("() => (document.querySelector('svg.chart polyline')?.getAttribute('points') || '')"
                                   ".split(' ').length >= 2", timeout=40_000)
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            # change the BPF filter: the recorder reloads and the dashboard shows the new filter
            page.click("nav >> text=Config")
            page.fill("input[name='capture.bpf']", "tcp prt 80")
            page.click("main button[type=submit]")
            assert "capture.bpf" in page.text_content("#config-errors")
            page.fill("input[name='capture.bpf']", NEW_BPF)
            page.screenshot(path=str(shots / "config.png"), full_page=True)
            page.click("main button[type=submit]")
            assert "was asked to reload" in page.text_content(".flash")
            assert f'bpf = "{NEW_BPF}"' in paths["cfg"].read_text()
            page.click("nav >> text=Dashboard")
            page.wait_for_function("bpf => document.querySelector('#bpf').textContent === bpf", arg=NEW_BPF,
                                   timeout=20_000)

            # search: tcp and port 8080 shows the demo's web sessions
            page.click("nav >> text=Search")

            def found() -> bool:
                page.fill("input[name=t]", "-1h")
                page.fill("input[name=filter]", "tcp and port 8080")
                page.click("main button[type=submit]")
                page.wait_for_load_state()
                return "8080" in (page.text_content("table.sessions tbody") or "")
            wait_for(found, 30, "search results for tcp and port 8080")
            cells = page.locator("table.sessions tbody tr").first.locator("td").all_text_contents()
            assert cells[2] == "tcp" and "8080" in (cells[4], cells[7])
            page.screenshot(path=str(shots / "search.png"), full_page=True)

            # a bad filter names its position
            page.fill("input[name=filter]", "tcp and prt 8080")
            page.click("main button[type=submit]")
            assert "column 9" in page.text_content("#search-error")

            alerts_in_browser(page, base, paths, shots)

            # live sessions
            page.click("nav >> text=Live")
            assert "does not publish" in page.text_content("main")
            page.screenshot(path=str(shots / "live.png"), full_page=True)

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

            # a phone-sized screen
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        storage_state=page.context.storage_state()).new_page()
            phone.goto(base + "/")
            phone.wait_for_function("() => document.querySelector('#state').textContent.includes('Recording')")
            phone.screenshot(path=str(shots / "dashboard-phone.png"))
            assert not errors, errors                       # no CSP violation, no script error
        finally:
            browser.close()
