"""The live record stream, end to end with real parts only: ``flowtap ra -S`` (a subprocess)
attached to a real ``flowtap web`` (waitress on a loopback port) whose archives are written by the
real recorder on a bridge in network namespaces, or by ``archive.ArchiveWriter`` where a test needs
to drive rotation; and real nginx, with a certificate made by ``systemd/flowtap-tls-cert``, in front
for https. Tokens are made and revoked on the web page, as an admin would.

What the client received must be exactly what the archive got after the attach point, which the
page logs ("attached at ARCHIVE rowid N"): archives only grow by appending, so the rows after it
are the records after position N of that archive, then every later archive.

The live test needs root (namespaces, a bridge, packet capture); without it, it fails, never
skips (DESIGN.md, Tests).
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from appliance import archive, config, filter as _filter, output, query
from conftest import build_record
from conftest_live import (  # noqa: F401  (fixtures are found by name)
    bridge, lab, recorder, settle, tcp_session, udp_exchange, wait_for)

REPO = Path(__file__).resolve().parent.parent
FLOWTAP = str(Path(sys.executable).with_name("flowtap"))
PASSWORD = "correct horse battery"
FIELDS = ["seq", "stime", "ltime", "proto", "saddr", "sport", "daddr", "dport", "spkts", "dpkts",
          "sbytes", "dbytes", "sappbytes", "dappbytes", "state", "cause"]
ATTACHED = re.compile(r"stream: token '([^']*)' from \S+ attached at (\S+) rowid (\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the sensor's web service -----------------------------------------------------------------

class Web:
    """`flowtap web` on a loopback port, set up (admin password) and logged in."""

    def __init__(self, tmp: Path, data_dir: Path, config_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "web.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [FLOWTAP, "web", "-c", str(config_path), "--listen", f"127.0.0.1:{self.port}",
             "--data-dir", str(data_dir), "--runtime-dir", str(tmp / "run")],
            stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        setup = re.search(r"setup token: (\S+)", line)
        assert setup, f"no setup token printed: {line!r} {self.log()}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        wait_for(lambda: self._answers(), 10, "flowtap web to answer")
        self.post("/setup", token=setup.group(1), password=PASSWORD, confirm=PASSWORD)

    def _answers(self) -> bool:
        try:
            self.opener.open(f"{self.url}/healthz", timeout=2)
        except urllib.error.HTTPError:
            return True                             # 503 without a recorder: it answers
        except OSError:
            return False
        return True

    def get(self, path: str) -> str:
        return self.opener.open(f"{self.url}{path}", timeout=10).read().decode()

    def post(self, path: str, form_path: str | None = None, **fields: str) -> str:
        """POST a form as the browser would: with the CSRF token of the page that shows it."""
        page = self.get(form_path or path)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        data = urllib.parse.urlencode({"csrf_token": csrf, **fields}).encode()
        return self.opener.open(f"{self.url}{path}", data, timeout=10).read().decode()

    def make_token(self, name: str) -> str:
        """A new API token, from the tokens page (shown there once)."""
        page = self.post("/tokens", name=name)
        return re.search(r'<code id="token-secret">([^<]+)</code>', page).group(1)

    def revoke(self, name: str) -> None:
        page = self.get("/tokens")
        action = re.search(rf'<td>{re.escape(name)}</td>.*?action="([^"]+/revoke)"', page, re.S).group(1)
        assert "Revoked the token" in self.post(action, "/tokens")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def attach_points(self) -> list[tuple[str, str, int]]:
        """(token name, archive, rowid) of every stream attached so far, in order."""
        return [(m[1], m[2], int(m[3])) for m in ATTACHED.finditer(self.log())]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def web_factory(tmp_path):
    started: list[Web] = []

    def start(data_dir: Path, config_path: Path) -> Web:
        started.append(Web(tmp_path, data_dir, config_path))
        return started[-1]
    yield start
    for w in started:
        w.close()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "data"
    (path / "archive").mkdir(parents=True)
    return path


@pytest.fixture
def web(web_factory, data_dir, tmp_path) -> Web:
    cfg = tmp_path / "flowtap.toml"
    cfg.write_text('[sensor]\nid = "stream-test"\n')
    return web_factory(data_dir, cfg)


@pytest.fixture
def writer(data_dir):
    """The archive writer the recorder uses, on the web's archive directory."""
    cfg = config.replace_section(config.override(config.Config(), data_dir=str(data_dir)), "archive",
                                 min_free_percent=0.0)
    w = archive.ArchiveWriter(cfg.archive, "stream-test", "br0", cfg.digest())
    yield w
    w.close()


def write(w: archive.ArchiveWriter, seqs: range, **kw: Any) -> None:
    """Commit one batch of records numbered by seqs."""
    now = time.time()
    w.add([build_record(seq=s, stime=now - 2, ltime=now - 1 + s / 1000, sport=40000 + s, sintf=0, **kw)
           for s in seqs], now=now)
    w.commit(now)


# --- the client -------------------------------------------------------------------------------

class Client:
    """`flowtap ra -S URL ARGS` (or racluster) with its output read as it comes."""

    def __init__(self, url: str, *args: str, token: str | None = None, env: dict | None = None,
                 command: str = "ra"):
        environ = {k: v for k, v in os.environ.items() if k != "FLOWTAP_TOKEN"}
        if token is not None:
            environ["FLOWTAP_TOKEN"] = token
        environ.update(env or {})
        self.proc = subprocess.Popen([FLOWTAP, command, "-S", url, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=environ, cwd=REPO)
        self.lines: list[str] = []
        self.arrived: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self.arrived.append(time.monotonic())

    def wait_lines(self, n: int, timeout: float = 10) -> None:
        wait_for(lambda: len(self.lines) >= n or self.proc.poll() is not None, timeout,
                 f"{n} lines from flowtap ra -S (have {len(self.lines)})")
        assert len(self.lines) >= n, f"ra -S ended early ({self.proc.returncode}): {self.finish()[1]}"

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the exit; (status, stderr)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"flowtap ra -S did not end within {timeout} s")
        self._reader.join(5)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, err

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, as an analyst ends a live stream."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()


def attach(web: Web, *args: str, token: str) -> Client:
    """Start a client and wait until the page has noted its attach point."""
    before = len(web.attach_points())
    client = Client(web.url, *args, token=token)
    wait_for(lambda: len(web.attach_points()) > before or client.proc.poll() is not None, 10,
             "the stream to attach")
    assert client.proc.poll() is None, client.finish()
    return client


def archived_since(archive_dir: Path, point: tuple[str, str, int], flt: str = "") -> list[dict]:
    """What the archives got after the attach point (read back through query.read_records),
    filtered by the filter language's record predicate."""
    _name, first, rowid = point
    keep = _filter.compile_predicate(_filter.parse(flt)) if flt else (lambda r: True)
    files = archive.list_archives(archive_dir)
    start = [p.name for p in files].index(first) if first != "None" else 0
    out = []
    for path in files[start:]:
        records = query.read_records(path)
        if path.name == first:
            records = itertools.islice(records, rowid, None)    # rowid N is the Nth row
        out += [r for r in records if keep(r)]
    return out


def stream_records(lines: list[str]) -> list[dict]:
    return list(output.read_stream(lines))


def project(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in FIELDS} for r in records]


# --- (a, b) a running sensor, with and without filters ----------------------------------------

@pytest.mark.live
def test_attached_clients_get_exactly_what_the_archive_gets(lab, recorder, web_factory):
    """Three clients on one recording sensor: every record, UDP only, TCP to port 8080 only. After
    the recorder stops (SIGTERM writes everything), each got exactly the archive's matching records
    since its attach point, field for field."""
    rec = recorder()
    web = web_factory(rec.data_dir, rec.config_path)
    token = web.make_token("analyst")
    early = tcp_session(lab, 100, 200, "fin")                    # archived before the attach:
    rec.wait_record(lambda r: (r["sport"], r["dport"]) == early.key[2::2], "the early session")
    udp_exchange(lab, b"x" * 10, b"y" * 20, dport=5300)          # still open: its record comes later
    everything = attach(web, "-w", "-", token=token)
    udp = attach(web, "-M", "json", "-s", *FIELDS, "-", "udp", token=token)
    tcp = attach(web, "-M", "json", "-s", *FIELDS, "-", "tcp", "and", "port", "8080", token=token)
    points = web.attach_points()[-3:]
    assert all(p[1] == rec.archives()[0].name and p[2] >= 1 for p in points), points

    tcp_session(lab, 3000, 50_000, "fin")
    udp_exchange(lab, b"q" * 33, b"r" * 120)
    tcp_session(lab, 700, 9000, "rst", port=8081)
    lab.run(lab.h1, "ping", "-c", "2", "-i", "0.2", lab.addr["h2"])
    left_open = tcp_session(lab, 4000, 9000, "open")
    settle(lab)
    assert rec.stop() == 0
    left_open.close()

    archive_dir = rec.data_dir / "archive"
    want_all = archived_since(archive_dir, points[0])
    want_udp = archived_since(archive_dir, points[1], "udp")
    want_tcp = archived_since(archive_dir, points[2], "tcp and port 8080")
    assert {r["proto"] for r in want_all} >= {1, 6, 17}
    assert len(want_udp) == 2 and len(want_tcp) == 2        # UDP: both exchanges; TCP: FIN, left open
    assert early.key[2] not in {r["sport"] for r in want_all}
    assert "Shutdown" in {r["cause"] for r in want_tcp}
    everything.wait_lines(2 + len(want_all))        # stream header and keys line, then records
    udp.wait_lines(len(want_udp))
    tcp.wait_lines(len(want_tcp))
    time.sleep(1.0)                                 # two polls: anything extra would be here now
    for client in (everything, udp, tcp):
        assert client.interrupt() == (0, "")        # Ctrl-C ends a live stream quietly
    assert stream_records(everything.lines) == want_all
    assert [json.loads(line) for line in udp.lines] == project(want_udp)
    assert [json.loads(line) for line in tcp.lines] == project(want_tcp)
    # The page noticed each client hang up and freed its slot.
    wait_for(lambda: web.log().count("detached") == 3, 5, "the page to notice the clients left")


# --- (c) refusals -------------------------------------------------------------------------------

def test_wrong_missing_or_revoked_tokens_are_refused(web, writer):
    write(writer, range(1, 3))
    token = web.make_token("laptop")

    wrong = Client(web.url, token="not-" + token)
    rc, err = wrong.finish()
    assert (rc, wrong.lines) == (1, [])
    assert err == (f"flowtap: {web.url}: the sensor refused the token (401): the API token is not "
                   "valid (wrong, or revoked)\n")

    none = Client(web.url)
    rc, err = none.finish()
    assert rc == 2 and "-S needs an API token: --token-file FILE or FLOWTAP_TOKEN" in err
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    conn.request("GET", "/api/v1/stream")
    resp = conn.getresponse()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate") == 'Bearer realm="flowtap"'
    assert resp.getheader("Content-Security-Policy")
    conn.close()

    live = attach(web, "-n", token=token)
    web.revoke("laptop")                            # an open stream ends at once...
    t0 = time.monotonic()
    rc, err = live.finish(timeout=5)
    assert time.monotonic() - t0 < 3
    assert rc == 1
    assert err == f"flowtap: {web.url}: the sensor ended the stream: the API token was revoked\n"
    again = Client(web.url, token=token)            # ...and the token opens nothing any more
    rc, err = again.finish()
    assert rc == 1 and "refused the token (401)" in err


def test_token_file_is_read_and_the_token_never_opens_a_page(web, writer, tmp_path):
    write(writer, range(1, 3))
    token = web.make_token("file")
    path = tmp_path / "token"
    path.write_text(token + "\n")
    client = attach(web, "--token-file", str(path), "-N", "1", "-s", "seq", token=None)
    write(writer, range(10, 12))
    rc, err = client.finish()                       # -N 1: one record, then it stops by itself
    assert (rc, err) == (0, "")
    assert [line.split() for line in client.lines] == [["Seq"], ["10"]]
    req = urllib.request.Request(f"{web.url}/archives", headers={"Authorization": f"Bearer {token}"})
    resp = urllib.request.build_opener(NoRedirect).open(req, timeout=10)
    assert resp.status == 302 and "/login" in resp.headers["Location"]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None

    def http_error_302(self, req, fp, code, msg, headers):
        return fp


# --- (d) a bad filter -----------------------------------------------------------------------------

def test_bad_filter_is_the_sensors_one_line_error_exit_2(web, writer, data_dir):
    write(writer, range(1, 3))
    token = web.make_token("filters")
    client = Client(web.url, "-", "tcp", "and", "(", token=token)
    rc, err = client.finish()
    local = subprocess.run([FLOWTAP, "ra", "-r", str(data_dir / "archive"), "-", "tcp", "and", "("],
                           capture_output=True, text=True)
    assert (rc, err) == (2, local.stderr) == (2, "flowtap: filter error at column 10: expected a "
                                                  "primitive, got end of filter\n")
    client = Client(web.url, "-t", "yesterday", token=token)
    rc, err = client.finish()
    assert rc == 2 and err.startswith("flowtap: -t 'yesterday': ") and "(column" in err


# --- (f) rotation, and how soon a record arrives ------------------------------------------------

def test_stream_follows_the_archive_across_a_rotation(web, writer, data_dir):
    """Rows the old archive got just before it was closed still come, then the new archive's,
    in order; a committed record reaches the client within a second or so."""
    write(writer, range(1, 4))                      # before the attach
    token = web.make_token("rotation")
    client = attach(web, "-w", "-", token=token)
    point = web.attach_points()[-1]
    assert point[1:] == (archive.list_archives(data_dir / "archive")[0].name, 3)
    write(writer, range(10, 11))
    committed = time.monotonic()
    client.wait_lines(3)
    assert client.arrived[2] - committed < 2.0, "a record took more than 2 s to arrive"
    write(writer, range(11, 14))                    # the old archive's last rows...
    writer.rotate(time.time())                      # ...closed within the same poll interval
    write(writer, range(20, 24), proto=17)
    files = archive.list_archives(data_dir / "archive")
    assert len(files) == 2 and archive.is_closed(files[0])
    client.wait_lines(2 + 8)
    time.sleep(1.0)
    assert client.interrupt() == (0, "")
    got = stream_records(client.lines)
    assert [r["seq"] for r in got] == [10, 11, 12, 13, 20, 21, 22, 23]
    assert got == archived_since(data_dir / "archive", point)


def test_racluster_merges_what_arrived_until_ctrl_c(web, writer):
    token = web.make_token("cluster")
    before = len(web.attach_points())
    client = Client(web.url, "-m", "proto", "-s", "proto", "trans", "pkts", "-nn", "-L", "-1",
                    token=token, command="racluster")
    wait_for(lambda: len(web.attach_points()) > before, 10, "racluster -S to attach")
    write(writer, range(1, 4))
    write(writer, range(4, 6), proto=17)
    time.sleep(2.0)            # four polls: both batches have gone out (racluster prints at the end)
    assert client.interrupt() == (0, "")
    assert [line.split() for line in client.lines] == [["6", "3", "27"], ["17", "2", "18"]]


# --- (e) https through nginx ------------------------------------------------------------------------

@pytest.fixture
def nginx(web, tmp_path):
    """nginx with systemd/nginx-flowtap.conf (port, certificate and upstream moved to the test's)
    and a certificate made by systemd/flowtap-tls-cert; yields (https URL, certificate)."""
    nginx_bin = "/usr/sbin/nginx"
    assert Path(nginx_bin).exists(), "nginx not found: apt-get install nginx"
    tls = tmp_path / "tls"
    made = subprocess.run([str(REPO / "systemd/flowtap-tls-cert"), "--dir", str(tls)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    port = free_port()
    site = (REPO / "systemd/nginx-flowtap.conf").read_text()
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"), ("listen [::]:443 ssl;", ""),
                     ("/etc/flowtap/tls", str(tls)), ("127.0.0.1:8080", f"127.0.0.1:{web.port}")):
        assert old in site, old
        site = site.replace(old, new)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "flowtap.conf").write_text(site)
    temp = "".join(f"    {k}_temp_path {prefix / k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp}"
        f"    include {prefix / 'flowtap.conf'};\n}}\n")
    log = (prefix / "error.log").open("w")
    proc = subprocess.Popen([nginx_bin, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                             "-e", str(prefix / "error.log")], stderr=log)

    def listening() -> bool:
        assert proc.poll() is None, (prefix / "error.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    try:
        wait_for(listening, 10, "nginx to listen")
        yield f"https://127.0.0.1:{port}", tls / "cert.pem"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_https_through_nginx_with_the_sensors_certificate(web, nginx, writer):
    url, cert = nginx
    write(writer, range(1, 3))
    token = web.make_token("tls")

    unverified = Client(url, token=token)
    rc, err = unverified.finish()
    assert rc == 1 and "the sensor's TLS certificate does not verify" in err and "--cacert" in err

    before = len(web.attach_points())
    client = Client(url, "--cacert", str(cert), "-M", "json", "-s", "seq", "saddr", token=token)
    wait_for(lambda: len(web.attach_points()) > before, 10, "the stream to attach through nginx")
    write(writer, range(10, 12))
    committed = time.monotonic()
    client.wait_lines(2)                             # nginx passes lines on as they come
    assert client.arrived[1] - committed < 2.0
    assert client.interrupt() == (0, "")
    assert [json.loads(line)["seq"] for line in client.lines] == [10, 11]

    # waitress believes nginx's X-Forwarded-Proto: the session cookie is Secure over TLS.
    context = ssl.create_default_context(cafile=str(cert))
    resp = urllib.request.urlopen(f"{url}/login", context=context, timeout=10)
    assert "Secure" in resp.headers["Set-Cookie"] and resp.headers["Content-Security-Policy"]
