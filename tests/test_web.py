"""The admin web page through Flask's test client: every route and every refusal; and the real
`flowtap web` under waitress streaming a 200 MB archive in constant memory."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from appliance import archive, config
from appliance.capture import check_bpf
from appliance.cli import cli
from appliance.web import create_app, settings
from conftest import damage_page, record_captures

PASSWORD = "correct horse battery"
CAPTURES = ["basic/dpkt-http.pcap", "basic/tcpreplay-test.pcap", "basic/pcpp-dns.pcap"]
PROTECTED = ["/", "/dashboard/panel", "/live", "/search", "/search?t=&filter=tcp", "/search/download/csv",
             "/archives", "/archives/x/sqlite", "/config", "/password", "/tokens"]


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(pcaps_dir, tmp_path_factory) -> Path:
    """A data directory whose archive/ holds real captures recorded by the Recorder (closed)."""
    return record_captures(pcaps_dir, tmp_path_factory, CAPTURES)


@pytest.fixture
def config_path(tmp_path) -> Path:
    path = tmp_path / "flowtap.toml"
    path.write_text('[sensor]\nid = "tap1"\n\n[web]\nlisten = "127.0.0.1:8088"\n\n'
                    '[export]\ncollectors = ["ipfix+udp://127.0.0.1:4739"]\n')
    return path


@pytest.fixture
def app(config_path, data_dir, runtime_dir):
    return create_app(config_path=config_path, data_dir=str(data_dir), runtime_dir=str(runtime_dir),
                      settings={"TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


def csrf(client, url: str = "/login") -> str:
    """The CSRF token from a form on ``url``."""
    page = client.get(url)
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m, page.text
    return m.group(1)


def setup_password(client, app) -> None:
    token = (Path(app.instance_path) / "setup-token").read_text().strip()
    r = client.post("/setup", data={"csrf_token": csrf(client, "/setup"), "token": token,
                                    "password": PASSWORD, "confirm": PASSWORD})
    assert r.status_code == 302 and r.location == "/"


@pytest.fixture
def admin(client, app):
    """A client logged in as admin (the password set through the setup page)."""
    setup_password(client, app)
    return client


def login(client, password: str = PASSWORD, next_: str = "", addr: str = "127.0.0.1"):
    token = csrf(client)
    return client.post("/login", data={"csrf_token": token, "password": password, "next": next_},
                       environ_base={"REMOTE_ADDR": addr})


def write_status(runtime_dir: Path, **over) -> dict:
    """A status.json as the recorder writes it (fresh, recording)."""
    now = time.time()
    doc = {"version": "0.1.0", "sensor_id": "tap1", "state": "recording", "since": now - 3700,
           "time": now, "uptime": 3700.0, "pid": 999999, "bpf": "not port 22", "config_digest": "x",
           "interfaces": [{"name": "eth0", "operstate": "up", "carrier": True, "speed": 1000,
                           "promisc": True, "rx_packets": 1234, "tx_packets": 5, "rx_bytes": 1,
                           "tx_bytes": 1, "rx_dropped": 0, "rx_errors": 0, "packets": 1200, "bytes": 99},
                          {"name": "eth1", "operstate": "down", "carrier": False, "speed": None,
                           "promisc": True, "rx_packets": 0, "tx_packets": 0, "rx_bytes": 0,
                           "tx_bytes": 0, "rx_dropped": 0, "rx_errors": 0, "packets": 0, "bytes": 0}],
           "packets": 4242424, "bytes": 5_000_000_000, "kernel_drops": 17, "interface_drops": 2,
           "decode_errors": {}, "flows_active": 321, "flows_capacity": 262144, "flows_evicted": 0,
           "records": 1000, "records_written": 990, "records_lost": 0, "write_errors": 0,
           "last_error": "", "pps": 1500.0, "bps": 12e6,
           "rates": [(now - 3600 + 10 * i, 1000 + i, 8e6 + i) for i in range(360)],
           "archive": {"archive_bytes": 123_000_000, "archives": 3, "fs_bytes": 32_000_000_000,
                       "fs_free": 20_000_000_000, "oldest": "flows-20040513T100000Z.sqlite",
                       "current": None, "dir": "/x"},
           "clock_synced": True}
    doc.update(over)
    (runtime_dir / "status.json").write_text(json.dumps(doc))
    return doc


def open_archive(archive_dir: Path, make_record, n: int = 30):
    """An open archive (WAL, writable) with n records ending in the last minute; returns the writer."""
    cfg = config.replace_section(config.Config(), "archive", dir=str(archive_dir), min_free_percent=0.0)
    w = archive.ArchiveWriter(cfg.archive, "tap1", "br0", cfg.digest())
    now = time.time()
    w.add([make_record(seq=i, stime=now - 30, ltime=now - 20 + i / 10, sport=40000 + i,
                       sbytes=100 * i, sintf=0) for i in range(n)], now=now)
    w.commit(now)
    return w


def all_records(archive_dir: Path, where: str = "1") -> int:
    n = 0
    for p in archive.list_archives(archive_dir):
        conn = archive.open_readonly(p)
        n += conn.execute(f"SELECT count(*) FROM flows WHERE {where}").fetchone()[0]
        conn.close()
    return n


# --- first start and the instance files ------------------------------------------------------------

def test_first_start_has_no_password_only_a_private_setup_token(app, client):
    inst = Path(app.instance_path)
    assert stat.S_IMODE(inst.stat().st_mode) == 0o700
    for name in ("setup-token", "secret_key"):
        assert stat.S_IMODE((inst / name).stat().st_mode) == 0o600
    assert not (inst / "auth.json").exists()
    assert client.get("/").location == "/setup"
    assert client.get("/login").location == "/setup"
    page = client.get("/setup")
    assert page.status_code == 200 and "setup token" in page.text


def test_setup_refuses_wrong_token_and_weak_passwords(app, client):
    token = (Path(app.instance_path) / "setup-token").read_text().strip()
    tok = csrf(client, "/setup")
    r = client.post("/setup", data={"csrf_token": tok, "token": "nope", "password": PASSWORD, "confirm": PASSWORD})
    assert r.status_code == 403 and "not the setup token" in r.text
    r = client.post("/setup", data={"csrf_token": tok, "token": token, "password": "short", "confirm": "short"})
    assert r.status_code == 400 and "at least 10" in r.text
    r = client.post("/setup", data={"csrf_token": tok, "token": token, "password": PASSWORD, "confirm": PASSWORD + "x"})
    assert r.status_code == 400 and "differ" in r.text
    assert not (Path(app.instance_path) / "auth.json").exists()
    setup_password(client, app)
    auth = json.loads((Path(app.instance_path) / "auth.json").read_text())
    assert auth["hash"].startswith("$argon2id$")
    assert stat.S_IMODE((Path(app.instance_path) / "auth.json").stat().st_mode) == 0o600
    assert not (Path(app.instance_path) / "setup-token").exists()      # one time only
    assert client.get("/").status_code == 200
    assert client.get("/setup").location == "/login"


def test_secret_key_and_password_survive_a_restart(app, config_path, data_dir, runtime_dir):
    setup_password(app.test_client(), app)
    again = create_app(config_path=config_path, data_dir=str(data_dir), runtime_dir=str(runtime_dir),
                       settings={"TESTING": True})
    assert again.secret_key == app.secret_key
    assert login(again.test_client()).location == "/"


# --- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", PROTECTED)
def test_every_page_needs_a_session(admin, app, url):
    anon = app.test_client()
    r = anon.get(url)
    assert r.status_code == 302 and r.location.startswith("/login?next=")


@pytest.mark.parametrize("url", ["/api/status", "/metrics"])
def test_api_and_metrics_refuse_without_credentials(admin, app, url):
    anon = app.test_client()
    r = anon.get(url)
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    assert anon.get(url, auth=("admin", "wrong password")).status_code == 401
    assert anon.get(url, auth=("admin", PASSWORD)).status_code == 200


def test_healthz_needs_no_session(app):
    assert app.test_client().get("/healthz").status_code == 503


@pytest.mark.parametrize("url", ["/config", "/password", "/logout", "/login", "/setup", "/tokens",
                                 "/tokens/0123456789ab/revoke"])
def test_posts_without_a_valid_csrf_token_are_refused(admin, url):
    before = admin.get("/")
    assert before.status_code == 200
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "forged"}):
        r = admin.post(url, data=data)
        assert r.status_code == 400 and "security token" in r.text
    assert admin.get("/").status_code == 200          # the logout above did not happen


def test_csrf_token_is_per_session(admin, app):
    other = app.test_client()
    token = csrf(admin, "/config")
    assert token != csrf(other)
    r = other.post("/login", data={"csrf_token": token, "password": PASSWORD})
    assert r.status_code == 400


def test_wrong_password_then_rate_limit_per_address(admin, app):
    admin.post("/logout", data={"csrf_token": csrf(admin, "/")})
    c = app.test_client()
    for _ in range(5):
        r = login(c, "wrong password", addr="10.0.0.9")
        assert r.status_code == 403 and "Wrong password" in r.text
    r = login(c, PASSWORD, addr="10.0.0.9")
    assert r.status_code == 429                       # even the right password: wait
    assert login(app.test_client(), PASSWORD, addr="10.0.0.10").location == "/"


def test_failures_from_many_addresses_lock_nobody_else_out(admin, app):
    """No limit over all addresses (issue 15, hole 1; more in test_web_auth.py)."""
    for i in range(8):
        assert login(app.test_client(), "wrong password", addr=f"10.1.0.{i}").status_code == 403
    assert login(app.test_client(), PASSWORD, addr="10.1.1.1").location == "/"


def test_rate_limit_applies_to_basic_auth(admin, app):
    anon = app.test_client()
    for _ in range(5):
        assert anon.get("/metrics", auth=("admin", "nope"), environ_base={"REMOTE_ADDR": "10.2.0.1"}).status_code == 401
    assert anon.get("/metrics", auth=("admin", PASSWORD), environ_base={"REMOTE_ADDR": "10.2.0.1"}).status_code == 429


@pytest.mark.parametrize("target, expected", [("/archives", "/archives"), ("//evil.example/x", "/"),
                                              ("https://evil.example/", "/"), ("/\\evil.example", "/"),
                                              ("", "/")])
def test_login_redirects_only_to_local_pages(admin, app, target, expected):
    c = app.test_client()
    assert login(c, next_=target).location == expected


def test_logout_and_password_change_end_sessions(admin, app):
    other = app.test_client()
    assert login(other).location == "/"
    tok = csrf(admin, "/password")
    r = admin.post("/password", data={"csrf_token": tok, "current": "wrong", "new": "x" * 12, "confirm": "x" * 12})
    assert r.status_code == 403
    r = admin.post("/password", data={"csrf_token": tok, "current": PASSWORD, "new": "short", "confirm": "short"})
    assert r.status_code == 400
    r = admin.post("/password", data={"csrf_token": tok, "current": PASSWORD, "new": "new password 1",
                                      "confirm": "new password 1"})
    assert r.status_code == 302
    assert admin.get("/").status_code == 200                 # this session goes on
    assert other.get("/").status_code == 302                 # the other one ended
    assert login(app.test_client()).status_code == 403       # the old password no longer works
    assert login(app.test_client(), "new password 1").location == "/"
    admin.post("/logout", data={"csrf_token": csrf(admin, "/")})
    assert admin.get("/").status_code == 302


def test_oversized_and_malformed_requests(admin):
    tok = csrf(admin, "/config")
    r = admin.post("/config", data={"csrf_token": tok, "sensor.id": "x" * 100_000})
    assert r.status_code == 413
    r = admin.post("/login", data=b"\xff\xfe\x00garbage", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400
    r = admin.post("/config", data="not a form", content_type="application/json")
    assert r.status_code == 400
    assert admin.get("/search?t=&filter=%00").status_code == 400
    assert admin.get("/search?t=&filter=" + "a" * 3000).status_code == 400
    assert admin.get("/search?t=&page=abc").status_code == 400
    assert admin.get("/search?t=&page=0").status_code == 400
    assert admin.get("/search?t=&page=99999999999").status_code == 400
    assert admin.get("/search?t=&sort=rowid;drop").status_code == 400
    assert admin.get("/search?t=&order=sideways").status_code == 400
    assert admin.get("/nowhere").status_code == 404
    assert admin.delete("/config", headers={"X-CSRF-Token": tok}).status_code == 405


def test_security_headers_and_cookie_flags(app, client):
    r = client.get("/setup")
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in r.text and " style=" not in r.text      # nothing inline for CSP to allow
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    tls = app.test_client().get("/setup", base_url="https://localhost")
    assert "Secure" in tls.headers["Set-Cookie"]
    assert client.get("/nowhere").headers["X-Frame-Options"] == "DENY"


# --- API tokens and the live record stream (end to end in test_stream.py) ---------------------------

def make_token(admin, name: str = "laptop") -> str:
    page = admin.post("/tokens", data={"csrf_token": csrf(admin, "/tokens"), "name": name},
                      follow_redirects=True)
    assert page.status_code == 200, page.text
    return re.search(r'<code id="token-secret">([^<]+)</code>', page.text).group(1)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_is_shown_once_and_only_its_hash_is_stored(admin, app):
    assert "no tokens" in admin.get("/tokens").text
    assert "/tokens" in admin.get("/config").text                       # linked from the config page
    token = make_token(admin, "analyst's laptop")
    assert len(token) >= 43                                             # 32 random bytes
    page = admin.get("/tokens").text
    assert "analyst&#39;s laptop" in page and token not in page         # never shown again
    stored = Path(app.instance_path) / "api-tokens.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    text = stored.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text


@pytest.mark.parametrize("name, message", [("", "Give the token a name"), ("x" * 65, "at most 64"),
                                           ("a\x07b", "plain text")])
def test_token_names_are_checked(admin, app, name, message):
    r = admin.post("/tokens", data={"csrf_token": csrf(admin, "/tokens"), "name": name})
    assert r.status_code == 400 and message in r.text
    assert not (Path(app.instance_path) / "api-tokens.json").exists()


def test_revoked_token_is_refused_at_once(admin, app):
    token = make_token(admin)
    assert admin.get("/api/v1/stream", headers=bearer(token), buffered=False).status_code == 200
    entry = app.extensions["flowtap_tokens"].tokens[0]
    r = admin.post(f"/tokens/{entry['id']}/revoke", data={"csrf_token": csrf(admin, "/tokens")})
    assert r.status_code == 302 and "Revoked" in admin.get("/tokens").text
    assert app.test_client().get("/api/v1/stream", headers=bearer(token)).status_code == 401
    r = admin.post(f"/tokens/{entry['id']}/revoke", data={"csrf_token": csrf(admin, "/tokens")})
    assert r.status_code == 404


def test_stream_needs_a_token_and_a_token_opens_no_page(admin, app):
    token = make_token(admin)
    anon = app.test_client()
    r = anon.get("/api/v1/stream")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="flowtap"'
    assert r.mimetype == "text/plain" and r.headers["Content-Security-Policy"]
    r = anon.get("/api/v1/stream", headers=bearer("nope"))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert anon.get("/api/v1/stream", headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert admin.get("/api/v1/stream").status_code == 401              # a session is not a token
    for url in ("/", "/archives", "/config", "/tokens"):
        assert anon.get(url, headers=bearer(token)).status_code == 302  # to the login page


def test_wrong_tokens_count_in_the_rate_limit(admin, app):
    token = make_token(admin)
    anon = app.test_client()
    for _ in range(5):
        assert anon.get("/api/v1/stream", headers=bearer("guess"),
                        environ_base={"REMOTE_ADDR": "10.3.0.1"}).status_code == 401
    r = anon.get("/api/v1/stream", headers=bearer("guess"), environ_base={"REMOTE_ADDR": "10.3.0.1"})
    assert r.status_code == 429 and "from this address" in r.text
    # A valid token is a cheap lookup that cannot be guessed: accepted even from there (issue 15).
    assert anon.get("/api/v1/stream", headers=bearer(token), environ_base={"REMOTE_ADDR": "10.3.0.1"},
                    buffered=False).status_code == 200


@pytest.mark.parametrize("query, message", [
    ("filter=tcp+and+(", "filter error at column 10: expected a primitive"),
    ("filter=" + "a" * 3000, "filter: too long"),
    ("filter=%00", "filter error at column 1"),
    ("t=yesterday", "-t 'yesterday': "),
])
def test_stream_refuses_bad_filters_before_streaming(admin, query, message):
    r = admin.get(f"/api/v1/stream?{query}", headers=bearer(make_token(admin)))
    assert r.status_code == 400 and r.mimetype == "text/plain"
    assert r.text.startswith(message) and r.text.count("\n") == 1


def test_stream_slots_are_limited_and_given_back(config_path, data_dir, runtime_dir):
    app = create_app(config_path=config_path, data_dir=str(data_dir), runtime_dir=str(runtime_dir),
                     settings={"TESTING": True, "STREAM_LIMIT": 1})
    c = app.test_client()
    setup_password(c, app)
    token = make_token(c)
    first = c.get("/api/v1/stream", headers=bearer(token), buffered=False)
    header = json.loads(next(first.response))
    assert first.status_code == 200 and first.mimetype == "application/x-ndjson"
    assert header == {"flowtap": "stream", "version": 1, "rowid": header["rowid"],
                      "archive": archive.list_archives(data_dir / "archive")[-1].name}
    busy = c.get("/api/v1/stream", headers=bearer(token))
    assert busy.status_code == 503 and "1 streams at most" in busy.text
    first.close()                                       # the server closes the body: slot free
    again = c.get("/api/v1/stream", headers=bearer(token), buffered=False)
    assert again.status_code == 200
    again.close()


# --- dashboard, health, metrics, api ---------------------------------------------------------------

def test_dashboard_shows_the_recorder_status(admin, runtime_dir):
    write_status(runtime_dir)
    page = admin.get("/")
    assert page.status_code == 200
    text = page.text
    assert "Recording eth0, eth1 since" in text
    for needle in ("4,242,424", "1.5 kp/s", "12.0 Mb/s", ">17<", ">321<", "eth0", "1000 Mb/s", ">down<",
                   "synchronised", "1h 1m", "0.1.0", "tap1", "not port 22", "38% used", "3 files",
                   "2004-05-13", "<polyline", 'http-equiv="refresh"'):
        assert needle in text, needle
    assert admin.get("/dashboard/panel").text.count("<polyline") == 2


def test_dashboard_without_a_recorder(admin):
    page = admin.get("/")
    assert page.status_code == 200 and "Not recording: no status from the recorder" in page.text


def test_healthz_reasons(client, runtime_dir):
    assert "no status" in client.get("/healthz").text
    write_status(runtime_dir)
    r = client.get("/healthz")
    assert r.status_code == 200 and r.text.startswith("ok")
    write_status(runtime_dir, time=time.time() - 60)
    r = client.get("/healthz")
    assert r.status_code == 503 and "60 s old" in r.text
    write_status(runtime_dir, state="stopped")
    r = client.get("/healthz")
    assert r.status_code == 503 and "stopped" in r.text
    (runtime_dir / "status.json").write_text("{not json")
    assert client.get("/healthz").status_code == 503


def test_api_status(admin, runtime_dir):
    doc = write_status(runtime_dir)
    body = admin.get("/api/status").get_json()
    assert body["recording"] is True and body["problem"] is None
    assert body["status"]["packets"] == doc["packets"] and body["status"]["age"] < 5
    assert body["horizon"] is not None


def test_metrics(admin, runtime_dir, archive_dir):
    write_status(runtime_dir)
    r = admin.get("/metrics")
    assert r.mimetype == "text/plain" and "version=0.0.4" in r.headers["Content-Type"]
    values = dict(line.rsplit(" ", 1) for line in r.text.splitlines() if not line.startswith("#"))
    assert values["flowtap_recording"] == "1"
    assert values["flowtap_packets_total"] == "4242424" and values["flowtap_bytes_total"] == "5000000000"
    assert values["flowtap_uptime_seconds"] == "3700.0"
    assert values["flowtap_kernel_drops_total"] == "17"
    assert values["flowtap_sessions_active"] == "321"
    assert values["flowtap_archive_bytes"] == "123000000" and values["flowtap_archives"] == "3"
    assert values['flowtap_interface_up{interface="eth0"}'] == "1"
    assert values['flowtap_interface_up{interface="eth1"}'] == "0"
    assert r.text.count("# TYPE flowtap_interface_up gauge") == 1


# --- live sessions ---------------------------------------------------------------------------------

def test_live_sessions_are_the_busiest_recent_records_of_the_open_archive(admin, archive_dir,
                                                                         runtime_dir, make_record):
    w = open_archive(archive_dir, make_record)
    try:
        write_status(runtime_dir, archive={"current": w.current.path.name})
        page = admin.get("/live")
        assert page.status_code == 200
        assert "Ended in the last minute" in page.text and 'id="open-sessions"' in page.text
        ports = [int(p) for p in re.findall(r'<td class="num">(4\d{4})</td>', page.text)]
        assert ports == list(range(40029, 40000 - 1, -1))      # by bytes, largest first
    finally:
        w.close()


def test_live_sessions_without_an_open_archive(admin):
    page = admin.get("/live")
    assert page.status_code == 200 and "no sessions" in page.text


# --- archives --------------------------------------------------------------------------------------

def test_archive_list(admin, archive_dir):
    page = admin.get("/archives").text
    for p in archive.list_archives(archive_dir):
        info = archive.read_info(archive.open_readonly(p))
        assert p.name in page
        assert f"{info['records']:,}" in page
    assert page.count(">closed<") == len(archive.list_archives(archive_dir))


def test_download_closed_archive_in_every_format(admin, archive_dir):
    path = archive.list_archives(archive_dir)[-1]
    conn = archive.open_readonly(path)
    rows = conn.execute(f"SELECT {', '.join(archive.FLOW_NAMES)} FROM flows ORDER BY rowid").fetchall()
    r = admin.get(f"/archives/{path.name}/sqlite")
    assert r.status_code == 200 and r.data == path.read_bytes()
    assert r.headers["Content-Disposition"] == f'attachment; filename="{path.name}"'
    r = admin.get(f"/archives/{path.name}/csv.gz")
    assert r.headers["Content-Disposition"].endswith('.csv.gz"')
    table = list(csv.reader(io.StringIO(gzip.decompress(r.data).decode())))
    assert table[0] == list(archive.FLOW_NAMES) and len(table) == len(rows) + 1
    assert table[1][archive.FLOW_NAMES.index("saddr")] == rows[0][archive.FLOW_NAMES.index("saddr")]
    r = admin.get(f"/archives/{path.name}/jsonl.gz")
    lines = [json.loads(x) for x in gzip.decompress(r.data).decode().splitlines()]
    assert [tuple(x.values()) for x in lines] == rows and list(lines[0]) == list(archive.FLOW_NAMES)


def test_a_damaged_archive_is_searched_and_downloaded_around_the_damage(admin, archive_dir):
    """A damaged page in one archive (flash cards do that): search still answers (200) with every
    record SQLite can reach and names the archive and what was lost; the downloads hold every
    readable row, oldest first, and end cleanly."""
    path = max(archive.list_archives(archive_dir), key=lambda p: p.stat().st_size)
    names = list(archive.FLOW_NAMES)

    def search_csv() -> list[list[str]]:
        r = admin.get("/search/download/csv?t=&filter=")
        assert r.status_code == 200
        return list(csv.reader(io.StringIO(r.text)))[1:]

    def archive_rows(fmt: str) -> list[list[str]]:
        r = admin.get(f"/archives/{path.name}/{fmt}")
        assert r.status_code == 200
        text = gzip.decompress(r.data).decode()
        if fmt == "csv.gz":
            return list(csv.reader(io.StringIO(text)))[1:]
        return [[("" if v is None else str(v)) for v in json.loads(x).values()] for x in text.splitlines()]
    before, whole = search_csv(), archive_rows("csv.gz")
    before_json = archive_rows("jsonl.gz")
    damage_page(path)

    page = admin.get("/search?t=&filter=&sort=bytes&order=desc")     # reads every row
    assert page.status_code == 200
    note = re.search(rf"Damaged archive {re.escape(path.name)}: damaged: (\d+) records could not be "
                     r"read \(rowids (\d+)-(\d+);", page.text)
    assert note, page.text
    lost, first, last = map(int, note.groups())
    assert lost == last - first + 1 and 0 < lost < len(whole) // 2
    after = search_csv()
    gone = whole[first - 1:last]                       # rowids are the archive's row numbers
    assert after == [row for row in before if row not in gone]
    sizes = sorted((int(r[names.index("sbytes")]) + int(r[names.index("dbytes")]) for r in after),
                   reverse=True)
    assert [int(r[9].replace(",", "")) for r in result_rows(page.text)] == sizes[:50]
    stimes = [float(row[names.index("stime")]) for row in after]
    assert stimes == sorted(stimes)
    assert archive_rows("csv.gz") == whole[:first - 1] + whole[last:]
    assert archive_rows("jsonl.gz") == before_json[:first - 1] + before_json[last:]


def test_download_open_archive_is_a_consistent_snapshot(admin, app, archive_dir, make_record, tmp_path):
    w = open_archive(archive_dir, make_record, n=500)
    try:
        name = w.current.path.name
        r = admin.get(f"/archives/{name}/sqlite")
        out = tmp_path / "snap.sqlite"
        out.write_bytes(r.data)
        conn = sqlite3.connect(out)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT count(*) FROM flows").fetchone()[0] == 500
        assert list(Path(app.instance_path, "tmp").iterdir()) == []       # the temporary copy is gone
        lines = gzip.decompress(admin.get(f"/archives/{name}/jsonl.gz").data).splitlines()
        assert len(lines) == 500
        assert ">open<" in admin.get("/archives").text
    finally:
        w.close()


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "..", "flows-20990101T000000Z.sqlite",
                                  "secret.sqlite", "%2Fetc%2Fpasswd", "flows-20040513T100000Z.sqlite%00"])
def test_download_names_must_be_listed_archives(admin, archive_dir, name):
    (archive_dir / "secret.sqlite").write_text("not for download")
    assert admin.get(f"/archives/{name}/sqlite").status_code == 404


def test_download_unknown_format(admin, archive_dir):
    name = archive.list_archives(archive_dir)[0].name
    assert admin.get(f"/archives/{name}/exe").status_code == 404


# --- search ----------------------------------------------------------------------------------------

def result_rows(text: str) -> list[list[str]]:
    body = text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_search_filters_sorts_and_pages(admin, archive_dir, app):
    app.config["PAGE_SIZE"] = 20
    n_udp = all_records(archive_dir, "proto = 17")
    assert n_udp > 100
    r = admin.get("/search?t=&filter=udp&sort=bytes&order=desc")
    assert r.status_code == 200
    rows = result_rows(r.text)
    assert len(rows) == 20 and all(row[2] == "udp" for row in rows)
    sizes = [int(row[9].replace(",", "")) for row in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert 'rel="next"' in r.text and 'rel="prev"' not in r.text
    seen = []
    for page_no in range(1, n_udp // 20 + 3):
        page = admin.get(f"/search?t=&filter=udp&sort=bytes&order=desc&page={page_no}")
        seen += [int(row[9].replace(",", "")) for row in result_rows(page.text) if row[0] != "no sessions"]
    assert len(seen) == n_udp and seen == sorted(seen, reverse=True)
    up = result_rows(admin.get("/search?t=&filter=tcp&sort=dport&order=asc").text)
    assert len(up) == all_records(archive_dir, "proto = 6")
    assert [int(x[7]) for x in up] == sorted(int(x[7]) for x in up) and all(x[2] == "tcp" for x in up)


def test_search_default_range_is_the_last_hour_of_the_data(admin):
    page = admin.get("/search")          # the captures are old: the hour that ends with them
    assert page.status_code == 200 and "the last hour of the data" in page.text and "<tbody>" not in page.text
    assert 'value="-1h"' not in page.text
    assert "no sessions" in admin.get("/search?t=-1h&filter=").text


def test_search_time_range(admin, archive_dir):
    path = archive.list_archives(archive_dir)[0]
    info = archive.read_info(archive.open_readonly(path))
    span = f"{int(info['first_stime'])}-{int(info['last_ltime']) + 1}"
    rows = result_rows(admin.get(f"/search?t={span}&filter=").text)
    assert rows and len(rows) == min(50, info["records"])
    assert all(r[0].startswith("2004-05-13") for r in rows)


def test_bad_filter_shows_the_error_and_its_position(admin):
    r = admin.get("/search?t=&filter=" + urllib.parse.quote("tcp and prt 80"))
    assert r.status_code == 400
    assert "Filter error at column 9" in r.text
    assert "tcp and prt 80\n        ^</pre>" in r.text
    r = admin.get("/search?t=yesterday&filter=tcp")
    assert r.status_code == 400 and "Time range error" in r.text and 'aria-invalid="true"' in r.text
    r = admin.get("/search/download/csv?t=&filter=tcp+prt")
    assert r.status_code == 400 and "column" in r.text


def test_search_time_limit(admin, app, monkeypatch):
    from appliance import query
    monkeypatch.setattr(query, "PROGRESS_STEPS", 1)
    app.config["QUERY_TIME_LIMIT"] = 0.0
    r = admin.get("/search?t=&filter=udp")
    assert r.status_code == 503 and "took longer than" in r.text


@pytest.mark.parametrize("flt, where", [("tcp", "proto = 6"), ("udp and port 53", "proto = 17 AND (sport = 53 OR dport = 53)"),
                                        ("pkts gt 5", "spkts + dpkts > 5"), ("", "1")])
def test_search_downloads(admin, archive_dir, flt, where):
    n = all_records(archive_dir, where)
    q = urllib.parse.urlencode({"t": "", "filter": flt})
    r = admin.get(f"/search/download/csv?{q}")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0] == list(archive.FLOW_NAMES) and len(table) == n + 1
    stimes = [float(row[3]) for row in table[1:]]
    assert stimes == sorted(stimes)                                  # oldest first
    lines = admin.get(f"/search/download/jsonl?{q}").text.splitlines()
    assert len(lines) == n and all(json.loads(x)["seq"] is not None for x in lines)
    assert admin.get(f"/search/download/xml?{q}").status_code == 404


# --- configuration ---------------------------------------------------------------------------------

def form_values(admin) -> dict[str, str]:
    page = admin.get("/config").text
    values = dict(re.findall(r'<input name="([a-z_]+\.[a-z_]+)" value="([^"]*)"', page))
    values["csrf_token"] = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return values


def test_config_form_shows_the_file(admin):
    values = form_values(admin)
    assert values["sensor.id"] == "tap1" and values["flows.timeout_tcp"] == "60"
    assert values["archive.min_free_percent"] == "15.0" and values["capture.bpf"] == ""


def test_config_save_writes_toml_atomically_and_reloads_the_recorder(admin, config_path, runtime_dir, tmp_path):
    marker = tmp_path / "hup"
    code = ("import signal, sys, time, pathlib  # flowtap recorder stand-in\n"
            f"signal.signal(signal.SIGHUP, lambda *a: (pathlib.Path({str(marker)!r}).write_text('hup'), sys.exit(0)))\n"
            "print('ready', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        write_status(runtime_dir, pid=proc.pid)
        os.chmod(config_path, 0o640)
        values = form_values(admin)
        values.update({"capture.bpf": 'tcp port 80 or (udp and not port 53)', "flows.timeout_tcp": "120",
                       "capture.interfaces": "eth0 eth1", "archive.min_free_percent": "10.5"})
        r = admin.post("/config", data=values)
        assert r.status_code == 302, r.text
        proc.wait(10)
        assert marker.read_text() == "hup"
        page = admin.get("/config").text
        assert f"pid {proc.pid}) was asked to reload" in page
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    data = tomllib.loads(config_path.read_text())
    assert data["capture"] == {"interfaces": ["eth0", "eth1"], "bpf": "tcp port 80 or (udp and not port 53)",
                               **{k: v for k, v in data["capture"].items() if k not in ("interfaces", "bpf")}}
    assert data["flows"]["timeout_tcp"] == 120 and data["archive"]["min_free_percent"] == 10.5
    assert data["web"] == {"listen": "127.0.0.1:8088"}                     # keys the form lacks are kept
    assert data["export"]["collectors"] == ["ipfix+udp://127.0.0.1:4739"]
    assert config.load(config_path).flows.timeout_tcp == 120
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640
    assert [p.name for p in config_path.parent.iterdir() if p.name.startswith(".flowtap.toml")] == []


def test_config_save_without_a_recorder(admin, config_path):
    values = form_values(admin)
    r = admin.post("/config", data=values, follow_redirects=True)
    assert r.status_code == 200 and "the recorder is not running" in r.text


@pytest.mark.parametrize("field, value, message", [
    ("flows.timeout_tcp", "soon", "flows.timeout_tcp: must be a whole number"),
    ("flows.timeout_tcp", "0", "flows.timeout_tcp: must be an integer from 1"),
    ("flows.timeout_udp", "1.5", "flows.timeout_udp: must be a whole number"),
    ("archive.min_free_percent", "95", "archive.min_free_percent: must be a number from 0 to 90"),
    ("archive.min_free_percent", "nan", "archive.min_free_percent: must be a number"),
    ("sensor.id", "two words", "sensor.id: must be 1 to 64 printable characters without spaces"),
    ("sensor.id", "", "sensor.id: must be 1 to 64"),
    ("capture.interfaces", "a/b", "capture.interfaces: &#39;a/b&#39; is not an interface name"),
    ("capture.bpf", "tcp prt 80", "capture.bpf: can&#39;t parse filter expression"),
    ("capture.bpf", "port 99999", "capture.bpf: illegal port number"),
    ("archive.rotate_interval", "10", "archive.rotate_interval: must be an integer from 60"),
])
def test_invalid_config_values_are_refused_and_nothing_is_written(admin, config_path, field, value, message):
    before = config_path.read_bytes()
    values = form_values(admin)
    values[field] = value
    r = admin.post("/config", data=values)
    assert r.status_code == 400
    assert message in r.text
    assert f'name="{field}" value="{value}"' in r.text.replace("&#39;", "'").replace(
        "&#34;", '"') or value == "" or "&" in value
    assert config_path.read_bytes() == before


def test_config_missing_field_is_refused(admin, config_path):
    before = config_path.read_bytes()
    values = form_values(admin)
    del values["flows.timeout_icmp"]
    r = admin.post("/config", data=values)
    assert r.status_code == 400 and "flows.timeout_icmp: missing" in r.text
    assert config_path.read_bytes() == before


@pytest.mark.parametrize("text", ['plain', 'quote " and backslash \\ and tab \t', "newline\nand\rcr",
                                  "control \x01\x1f and del \x7f", "unicode é 😀 \u2028"])
def test_toml_strings_round_trip(text):
    data = {"sensor": {"id": text}, "capture": {"interfaces": [text, "eth0"], "promisc": False},
            "archive": {"min_free_percent": 12.5, "quota_bytes": 1 << 40}}
    assert tomllib.loads(settings.to_toml(data)) == data


def test_check_bpf():
    assert check_bpf("tcp and port 8080") is None
    assert check_bpf("vlan and ip6") is None
    assert "syntax error" in check_bpf("tcp and and")


# --- command line ----------------------------------------------------------------------------------

def test_web_command_help(runner):
    r = runner.invoke(cli, ["web", "--help"])
    tail = r.output.rstrip().split("Example:")
    assert r.exit_code == 0 and "--listen" in r.output
    assert len(tail) == 2 and "flowtap web" in tail[1] and "Options:" not in tail[1]


def test_web_command_refuses_a_bad_config(runner, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[flows]\ntimeout_tcp = 'soon'\n")
    r = runner.invoke(cli, ["web", "-c", str(bad), "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "flows.timeout_tcp" in r.output


def test_web_command_refuses_a_bad_listen_address(runner, tmp_path):
    r = runner.invoke(cli, ["web", "-c", str(tmp_path / "none.toml"), "--data-dir", str(tmp_path),
                            "--listen", "nowhere"])
    assert r.exit_code == 2 and "HOST:PORT" in r.output


# --- the real server: a 200 MB archive streams in constant memory ----------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_big_archive(archive_dir: Path, target: int) -> Path:
    """Copy a recorded archive, grow it by replicating its rows in SQL to about ``target`` bytes,
    and leave it as the open archive (WAL, writable)."""
    src = archive.list_archives(archive_dir)[-1]
    path = archive_dir / archive.archive_name(time.time())
    shutil.copyfile(src, path)
    os.chmod(path, 0o644)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -65536")
    cols = ", ".join(archive.FLOW_NAMES)
    while (size := path.stat().st_size) < target:
        rows = conn.execute("SELECT count(*) FROM flows").fetchone()[0]
        more = min(rows, int(rows * (target - size) / size) + 1000)
        conn.execute(f"INSERT INTO flows ({cols}) SELECT {cols} FROM flows LIMIT ?", (more,))
    conn.execute("UPDATE archive_info SET value = '\"open\"' WHERE key = 'state'")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Sampler(threading.Thread):
    """Samples a process's resident memory every 20 ms until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)


@pytest.mark.slow
def test_download_of_a_200_mb_archive_runs_in_constant_memory(data_dir, config_path, tmp_path):
    archive_dir = data_dir / "archive"
    big = build_big_archive(archive_dir, 200 * 1024 * 1024)
    size = big.stat().st_size
    n_rows = sqlite3.connect(f"file:{big}?mode=ro", uri=True).execute("SELECT count(*) FROM flows").fetchone()[0]
    port = free_port()
    flowtap = Path(sys.executable).with_name("flowtap")
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen([str(flowtap), "web", "-c", str(config_path), "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(data_dir), "--runtime-dir", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        token = re.search(r"setup token: (\S+)", proc.stdout.readline()).group(1)
        base = f"http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        for _ in range(100):
            try:
                page = opener.open(f"{base}/setup", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        tok = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"csrf_token": tok, "token": token, "password": PASSWORD,
                                       "confirm": PASSWORD}).encode()
        assert "Dashboard" in opener.open(f"{base}/setup", form, timeout=30).read().decode()
        opener.open(f"{base}/archives", timeout=60).read()                 # warm up every code path
        opener.open(f"{base}/archives/{archive.list_archives(archive_dir)[0].name}/csv.gz", timeout=60).read()
        baseline = rss_kib(proc.pid)
        results = {}
        for fmt in ("sqlite", "csv.gz", "jsonl.gz"):
            sampler = Sampler(proc.pid)
            sampler.start()
            t0 = time.monotonic()
            got = 0
            with opener.open(f"{base}/archives/{big.name}/{fmt}", timeout=600) as resp, open(os.devnull, "wb") as null:
                while block := resp.read(1 << 16):
                    got += len(block)
                    null.write(block)
            sampler.stop.set()
            sampler.join()
            results[fmt] = (got, time.monotonic() - t0, sampler.peak - baseline)
        for fmt, (got, secs, growth) in results.items():
            print(f"{fmt}: {got / 1e6:.0f} MB in {secs:.1f} s, RSS growth {growth / 1024:.1f} MiB "
                  f"(baseline {baseline / 1024:.1f} MiB; archive {size / 1e6:.0f} MB, {n_rows:,} rows)")
        assert results["sqlite"][0] >= size                     # the whole snapshot came through
        for fmt, (got, _secs, growth) in results.items():
            assert growth < 20 * 1024, f"{fmt}: RSS grew by {growth / 1024:.1f} MiB"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


def test_config_save_reports_an_unwritable_file(admin, tmp_path, app):
    app.config["CONFIG_PATH"] = str(tmp_path / "missing-dir" / "flowtap.toml")
    values = form_values(admin)
    r = admin.post("/config", data=values)
    assert r.status_code == 500 and "cannot write" in r.text


def test_unreadable_archive_is_listed_and_refused(admin, archive_dir):
    bad = archive_dir / "flows-20000101T000000Z.sqlite"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 4000)
    assert "unreadable" in admin.get("/archives").text
    assert admin.get(f"/archives/{bad.name}/sqlite").status_code == 404
    assert admin.get(f"/archives/{bad.name}/csv.gz").status_code == 404
    assert admin.get("/search?t=&filter=tcp").status_code == 200         # the others still answer


@pytest.mark.parametrize("target", ["/proc/self/environ", "secret"])
def test_a_link_named_like_an_archive_is_never_listed_or_served(admin, archive_dir, target, runner):
    """Issue 15, hole 4: whoever can write the archive directory (the recorder's user) plants
    `flows-20990102T000000Z.sqlite -> /proc/self/environ` (or a 0400 file the web user may read):
    the page neither lists nor serves it in any format, and the readers skip it."""
    if target == "secret":
        (archive_dir.parent / "secret").write_bytes(b"SQLite format 3\0" + b"private" * 100)
        os.chmod(archive_dir.parent / "secret", 0o400)
        target = str(archive_dir.parent / "secret")
    link = archive_dir / "flows-20990102T000000Z.sqlite"
    link.symlink_to(target)
    assert link.name not in admin.get("/archives").text
    for fmt in ("sqlite", "csv.gz", "jsonl.gz"):
        r = admin.get(f"/archives/{link.name}/{fmt}")
        assert r.status_code == 404 and b"private" not in r.data and b"PATH=" not in r.data
    assert link not in archive.list_archives(archive_dir)
    out = runner.invoke(cli, ["ra", "-r", str(archive_dir), "-s", "seq", "-N", "1"])
    assert out.exit_code == 0, out.output


def test_the_sqlite_download_opens_no_link_and_only_sqlite(admin, archive_dir):
    """The file is opened without following a link (a swap after the listing), and its first bytes
    must be SQLite's before anything is streamed."""
    from appliance.web import archives as web_archives

    path = archive.list_archives(archive_dir)[0]
    alias = archive_dir / "alias.sqlite"
    alias.symlink_to(path)
    with pytest.raises(OSError):
        web_archives.open_archive_file(alias)
    junk = archive_dir.parent / "junk.sqlite"
    junk.write_bytes(b"not sqlite at all" * 10)
    with pytest.raises(archive.ArchiveError):
        web_archives.open_archive_file(junk)
    with web_archives.open_archive_file(path) as f:
        assert f.read(16) == b"SQLite format 3\0"
