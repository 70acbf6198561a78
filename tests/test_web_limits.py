"""What a client may hold and what it may send (web/limits.py, issue 15 holes 3 and 5): download
slots, the thread budget and the write timeout on a real waitress server with real sockets that
never read; whole numbers and time ranges from outsiders; an archive directory the page cannot
read (the page run without the capabilities that let root read anything); the error answers of
the API (one plain line) and of the pages (the styled page)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance import alerts, archive
from appliance.alert_types import Alert
from appliance.web import create_app, limits
from test_web import bearer, make_token, setup_password, write_status
from conftest import record_captures

TESTS = Path(__file__).resolve().parent
BIG = "flows-20200101T000000Z.sqlite"
BIG_SIZE = 24 * 1024 * 1024        # far more than the socket buffers and waitress's 1 MiB hold


# --- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(pcaps_dir, tmp_path_factory) -> Path:
    """A data directory whose archive/ holds a real capture recorded by the Recorder (closed)."""
    return record_captures(pcaps_dir, tmp_path_factory, ["basic/dpkt-http.pcap"])


def make_app(data_dir: Path, runtime_dir: Path, testing: bool = True, **settings):
    """The app on these directories with the default config (TESTING on unless ``testing``)."""
    return create_app(config_path=data_dir / "flowtap.toml", data_dir=str(data_dir),
                      runtime_dir=str(runtime_dir), settings={"TESTING": testing, **settings})


@pytest.fixture
def admin_of(data_dir, runtime_dir):
    """A factory: a client logged in to a new app with these settings, and the app."""
    def make(**settings):
        app = make_app(data_dir, runtime_dir, **settings)
        client = app.test_client()
        setup_password(client, app)
        return client, app
    return make


def add_big_archive(archive_dir: Path) -> Path:
    """A closed archive of BIG_SIZE bytes: a recorded one with a table of padding."""
    path = archive_dir / BIG
    shutil.copyfile(archive.list_archives(archive_dir)[0], path)
    os.chmod(path, 0o644)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE padding (b BLOB)")
    conn.execute("INSERT INTO padding VALUES (zeroblob(?))", (BIG_SIZE,))
    conn.close()
    os.chmod(path, 0o444)                                   # closed: no write bits
    return path


def add_alert(archive_dir: Path) -> str:
    """One alert on the first recorded session; its id."""
    conn = sqlite3.connect(f"file:{archive.list_archives(archive_dir)[0]}?mode=ro", uri=True)
    stime, proto, saddr, sport, daddr, dport = conn.execute(
        "SELECT stime, proto, saddr, sport, daddr, dport FROM flows LIMIT 1").fetchone()
    conn.close()
    alert = Alert(time=stime, gid=1, sid=2100498, rev=1, msg="GPL ATTACK_RESPONSE", proto=proto,
                  saddr=saddr, sport=sport, daddr=daddr, dport=dport, format="eve", raw='{"n": 1}')
    alerts.import_alerts(archive_dir, [alert])
    return alert.id


# --- download slots (test client) ----------------------------------------------------------------

def test_download_slots_are_capped_and_given_back(admin_of, data_dir):
    """With DOWNLOAD_LIMIT 1, a download being streamed makes the next one (archives and the alerts'
    around.csv alike) a 503 with Retry-After and the styled page; closing it, reading it to its end,
    or a download refused on the way (404) gives the slot back."""
    archive_dir = data_dir / "archive"
    alert_id = add_alert(archive_dir)
    name = archive.list_archives(archive_dir)[0].name
    admin, _ = admin_of(DOWNLOAD_LIMIT=1)
    held = admin.get(f"/archives/{name}/csv.gz", buffered=False)
    assert held.status_code == 200
    for url in (f"/archives/{name}/sqlite", f"/alerts/{alert_id}/around.csv"):
        busy = admin.get(url)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "60"
        assert "<title>Service unavailable" in busy.text and "1 downloads at most" in busy.text
    held.close()                                            # the server closes it however it ended
    for _ in range(3):                                      # read to the end: free again at once
        r = admin.get(f"/archives/{name}/jsonl.gz", buffered=False)
        assert r.status_code == 200 and r.get_data()
    for _ in range(3):                                      # refusals hold no slot
        assert admin.get("/archives/flows-20000101T000000Z.sqlite/sqlite").status_code == 404
        assert admin.get(f"/archives/{name}/zip").status_code == 404
    r = admin.get(f"/alerts/{alert_id}/around.csv")
    assert r.status_code == 200 and r.text.startswith("srcid,seq,cause,stime,")


def test_slots_count_exactly():
    """take() hands out ``limit`` slots; giving one back twice frees it once."""
    slots = limits.Slots("downloads", 2)
    first, second = slots.take(), slots.take()
    assert first and second and slots.take() is None
    first()
    first()
    assert slots.taken == 1
    assert slots.take() is not None and slots.take() is None


def test_threads_cover_every_slot_and_the_pages():
    assert limits.thread_count({"STREAM_LIMIT": 4, "DOWNLOAD_LIMIT": 2}) == limits.PAGE_THREADS + 6


# --- stalled downloads on a real server ----------------------------------------------------------

SERVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from test_web import make_token, setup_password
from appliance.web import create_app, limits
data, run, listen, settings = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
app = create_app(config_path=data + "/none.toml", data_dir=data, runtime_dir=run, settings=settings)
client = app.test_client()
setup_password(client, app)
token = make_token(client)
print(json.dumps({"cookie": client.get_cookie("flowtap_session").value, "token": token}), flush=True)
limits.make_server(app, listen).run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_request(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A GET sent on a socket with a small receive buffer, which the test then never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    return s


def drain(s: socket.socket, timeout: float) -> tuple[int, str]:
    """Bytes the socket still gives, and how it ended ("eof", "reset" or "open")."""
    s.settimeout(timeout)
    got = 0
    try:
        while block := s.recv(1 << 16):
            got += len(block)
        return got, "eof"
    except ConnectionResetError:
        return got, "reset"
    except TimeoutError:
        return got, "open"


def timed_get(url: str, headers: dict[str, str], timeout: float = 5) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            return r.status, r.read(), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - t0


def test_stalled_downloads_leave_the_page_its_threads(data_dir, runtime_dir, tmp_path):
    """DOWNLOAD_LIMIT + 3 downloads of a 24 MB archive on sockets that never read, and a live
    stream that is never read: /healthz and pages still answer within 2 s, one more download is
    a 503, and once WRITE_TIMEOUT has passed the stalled downloads are dropped and a download
    succeeds. (Before: 8 threads, no cap, no write timeout: 8 such clients froze every page.)"""
    limit, write_timeout, extra = 2, 3.0, 3
    big = add_big_archive(data_dir / "archive")
    write_status(runtime_dir)
    port = free_port()
    settings = {"DOWNLOAD_LIMIT": limit, "STREAM_LIMIT": 1, "WRITE_TIMEOUT": write_timeout,
                "STREAM_POLL": 0.2}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(TESTS), str(data_dir), str(runtime_dir),
                               f"127.0.0.1:{port}", json.dumps(settings)],
                              stdout=subprocess.PIPE, stderr=log, text=True)
    sockets: list[socket.socket] = []
    try:
        login = json.loads(server.stdout.readline())
        base, cookie = f"http://127.0.0.1:{port}", {"Cookie": f"flowtap_session={login['cookie']}"}
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        download = f"/archives/{big.name}/sqlite"
        stalled = [raw_request(port, download, cookie) for _ in range(limit)]
        sockets += stalled
        time.sleep(0.5)                                    # both hold their slot, blocked on write
        stalled_at = time.monotonic()
        refused = [raw_request(port, download, cookie) for _ in range(extra)]
        sockets += refused
        sockets.append(raw_request(port, "/api/v1/stream", bearer(login["token"])))
        for s in refused:
            s.settimeout(2)
            assert s.recv(200).startswith(b"HTTP/1.1 503 "), "an extra download got a slot"
        code, body, secs = timed_get(base + "/healthz", {})
        assert (code, body, secs < 2) == (200, b"ok: recording\n", True), (code, body, secs)
        for page in ("/", "/archives"):
            code, body, secs = timed_get(base + page, cookie)
            assert code == 200 and secs < 2, (page, code, secs)
        code, body, secs = timed_get(base + download, cookie)
        assert code == 503 and b"2 downloads at most" in body and secs < 2, (code, body[:200], secs)

        got = 0
        while time.monotonic() - stalled_at < write_timeout + 10:
            code, body, _ = timed_get(base + download, cookie, timeout=30)
            if code == 200:
                got = len(body)
                break
            time.sleep(0.25)
        waited = time.monotonic() - stalled_at
        assert got == big.stat().st_size, f"no download after {waited:.1f} s"
        assert waited >= write_timeout - 1, f"a stalled download was dropped after {waited:.1f} s"
        for s in stalled:                    # what they never read, then the server's reset
            received, end = drain(s, 2)
            assert received < big.stat().st_size and end in ("reset", "eof"), (received, end)
        print(f"\nstalled downloads dropped and a new one served {waited:.1f} s after they stalled "
              f"(WRITE_TIMEOUT {write_timeout:g} s)")
    finally:
        for s in sockets:
            s.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()
        log.close()


# --- what outsiders send ---------------------------------------------------------------------------

BAD_NUMBERS = ["%C2%B2", "%D9%A3", "1" * 5000, "-1", "0", "1e3", "99999999999"]


@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_whole_numbers_from_a_request_are_400_not_500(admin_of, data_dir, raw):
    """'²' and '٣' pass str.isdigit but not int(); 5000 digits pass both checks but int() refuses
    them (more than 4300): every page parsing a number answers 400 with the field's name."""
    alert_id = add_alert(data_dir / "archive")
    admin, _ = admin_of()
    for url, field in ((f"/alerts?page={raw}", "page"), (f"/alerts?sid={raw}", "sid"),
                       (f"/alerts?priority={raw}", "priority"), (f"/alerts/{alert_id}/around?s={raw}", "s"),
                       (f"/alerts/{alert_id}/around?page={raw}", "page"),
                       (f"/alerts/{alert_id}/around.csv?s={raw}", "s")):
        r = admin.get(url)
        assert r.status_code == 400 and field in r.text, (url, r.status_code)


def test_whole_number():
    assert limits.whole_number("0042", 1, 2000) == 42
    assert limits.whole_number("2000", 1, 2000) == 2000
    for raw in ("²", "٣", "1" * 5000, "00001", "2001", "0", "", " 1", "+1"):
        assert limits.whole_number(raw, 1, 2000) is None, raw


HOSTILE_TIMES = ["1970/01/01-9999/12/31", "-99999999d", "0001/01/01-0001/01/02", "9999/12/31",
                 "-" + "9" * 150 + "d", "%00", "1e308", "nan"]


@pytest.mark.parametrize("t", HOSTILE_TIMES)
def test_hostile_time_ranges_are_refused_in_one_line(admin_of, t):
    """Time ranges out of datetime's range (once an OverflowError, a bare 500): 400 on every page,
    and on the stream API the one line `flowtap ra -S` prints."""
    admin, _ = admin_of()
    token = make_token(admin)
    for url in ("/search", "/search/download/csv", "/alerts"):
        r = admin.get(url, query_string={"t": t, "filter": ""})
        assert r.status_code == 400, (url, r.status_code)
    r = admin.get("/api/v1/stream", query_string={"t": t}, headers=bearer(token))
    assert r.status_code == 400 and r.mimetype == "text/plain" and r.text.count("\n") == 1, r.text
    assert r.text.startswith("-t ")


# --- error answers -----------------------------------------------------------------------------------

def test_unexpected_errors_are_a_plain_line_on_the_api_and_the_styled_page_elsewhere(data_dir,
                                                                                      runtime_dir):
    """An exception no view handled (as in production: TESTING off, so Flask answers 500): the API
    gets one line of text, a page the styled error page; neither shows the exception."""
    app = make_app(data_dir, runtime_dir, testing=False)

    def fails():
        raise RuntimeError("secret detail")
    app.add_url_rule("/api/v1/fails", "fails_api", fails)
    app.add_url_rule("/fails", "fails_page", fails)
    admin = app.test_client()
    setup_password(admin, app)
    r = admin.get("/api/v1/fails")
    assert r.status_code == 500 and r.mimetype == "text/plain" and r.text.count("\n") == 1
    assert "journal" in r.text and "secret" not in r.text and "<" not in r.text
    r = admin.get("/fails")
    assert r.status_code == 500 and r.mimetype == "text/html"
    assert "<title>Internal error" in r.text and "secret" not in r.text
    r = admin.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.mimetype == "text/plain" and r.text.count("\n") == 1


# --- an archive directory the page cannot read -------------------------------------------------------

UNREADABLE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from test_web import bearer, make_token, setup_password
from appliance.web import create_app
data, run, urls = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
app = create_app(config_path=data + "/none.toml", data_dir=data, runtime_dir=run)   # TESTING off
client = app.test_client()
setup_password(client, app)
token = make_token(client)
out = {}
for url in urls:
    r = client.get(url, headers=bearer(token) if url.startswith("/api/v1/") else {})
    out[url] = [r.status_code, r.mimetype, r.get_data(as_text=True)]
print(json.dumps(out))
"""
NEEDS_ARCHIVES = ["/", "/dashboard/panel", "/live", "/archives", "/search?t=-1h&filter=tcp",
                  "/search/download/csv?t=", "/archives/{name}/csv.gz", "/archives/{name}/sqlite",
                  "/alerts/{alert}", "/alerts/{alert}/around", "/alerts/{alert}/around.csv"]
API = ["/api/status", "/api/v1/stream"]


def test_an_archive_directory_the_page_cannot_read(data_dir, runtime_dir):
    """The archive directory has mode 0 (the page runs without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so root is refused like flowtap-web): pages answer the styled 503 saying
    which directory and why, the API one line, /healthz still answers."""
    archive_dir = data_dir / "archive"
    name, alert = archive.list_archives(archive_dir)[0].name, add_alert(archive_dir)
    write_status(runtime_dir)
    pages = [u.format(name=name, alert=alert) for u in NEEDS_ARCHIVES]
    urls = pages + API + ["/healthz", "/alerts"]
    archive_dir.chmod(0)
    proc = subprocess.run(drop_dac([sys.executable, "-c", UNREADABLE, str(TESTS), str(data_dir),
                                    str(runtime_dir), json.dumps(urls)]),
                          capture_output=True, text=True, timeout=120)
    archive_dir.chmod(0o750)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    for url in urls:
        code, mimetype, text = out[url]
        assert code != 500, f"{url}: 500\n{proc.stderr[-3000:]}"
    for url in pages:
        code, mimetype, text = out[url]
        assert (code, mimetype) == (503, "text/html"), url
        assert "<title>Service unavailable" in text and f"{archive_dir} cannot be read" in text, url
        assert "Permission denied" in text, url
    for url in API:
        code, mimetype, text = out[url]
        assert (code, mimetype) == (503, "text/plain") and text.count("\n") == 1, (url, text)
        assert f"{archive_dir} cannot be read (Permission denied)" in text, (url, text)
    assert out["/healthz"][:2] == [200, "text/plain"] and out["/healthz"][2] == "ok: recording\n"
    code, _, text = out["/alerts"]                    # the alerts page, with the reason in its form
    assert code == 503 and f"{archive_dir} cannot be read" in text


STREAM_THEN_LOCK = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from test_web import bearer, make_token, setup_password
from appliance.web import create_app
data, run = sys.argv[2], sys.argv[3]
app = create_app(config_path=data + "/none.toml", data_dir=data, runtime_dir=run,
                 settings={"STREAM_POLL": 0.05})
client = app.test_client()
setup_password(client, app)
body = client.get("/api/v1/stream", headers=bearer(make_token(client)), buffered=False).response
print(next(body).decode(), end="", flush=True)
os.chmod(data + "/archive", 0)
for line in body:
    print(line.decode(), end="", flush=True)
"""


def drop_dac(argv: list[str]) -> list[str]:
    """``argv`` run so that file modes bind it: as root, without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (as flowtap-web, which has no capabilities)."""
    if os.geteuid() != 0:
        return argv
    assert shutil.which("setpriv"), "setpriv (util-linux) not found"
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *argv]


def test_a_stream_ends_with_a_line_when_the_archive_directory_becomes_unreadable(data_dir,
                                                                                 runtime_dir):
    """A live stream whose archive directory stops being readable ends with an ``end`` line that
    says why (flowtap ra -S prints it), not with a cut connection."""
    proc = subprocess.run(drop_dac([sys.executable, "-c", STREAM_THEN_LOCK, str(TESTS), str(data_dir),
                                    str(runtime_dir)]), capture_output=True, text=True, timeout=60)
    (data_dir / "archive").chmod(0o750)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, *rest = [json.loads(line) for line in proc.stdout.splitlines()]
    assert header["flowtap"] == "stream"
    assert rest[-1] == {"end": "the archive directory cannot be read (Permission denied)"}, rest


def test_an_archive_deleted_after_the_listing_is_shown_as_gone(admin_of, data_dir):
    """describe() of an archive that retention removed between the listing and the look: a row
    saying so, not a 500 (FileNotFoundError)."""
    from appliance.web import archives
    _, app = admin_of()
    with app.test_request_context("/archives"):
        d = archives.describe(data_dir / "archive" / "flows-20000101T000000Z.sqlite")
    assert d["state"] == "unreadable" and "No such file" in d["error"] and d["size"] is None
