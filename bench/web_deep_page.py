"""Benchmark: the memory of the web process serving a deep search page (issue 15).

Builds an archive set of ARCHIVES closed hourly files of ROWS records each (the rows of a recorded
capture copied by SQL, with times spread over each hour and byte counts drawn at random so that
``sort=bytes`` interleaves the files), starts the real ``flowtap web`` (waitress) on a loopback
port, logs in through the setup page, loads page 1 once (every code path warm), then asks for the
deepest page the search allows (``page=2000&sort=bytes``, 100,000 rows into the result) and reads
the process's peak resident memory (VmHWM in /proc/PID/status) before and after.

``--pythonpath DIR`` runs the web process from another copy of the package (to measure an older
revision: ``git archive REV appliance | tar -x -C DIR``, plus the built ``_native`` module).

Example:
    .venv/bin/python bench/web_deep_page.py
    .venv/bin/python bench/web_deep_page.py --archives 4 --rows 120000 --pythonpath /tmp/old
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from appliance import archive, config, recorder  # noqa: E402

CAPTURE = REPO.parent / "shared" / "pcaps" / "basic" / "dpkt-http.pcap"
PASSWORD = "correct horse battery"
DEEP = "/search?t=&filter=&sort=bytes&order=desc&page=2000"
HOUR = 3600


def build(data_dir: Path, archives: int, rows: int, start: float = 1_700_000_000.0) -> list[Path]:
    """``archives`` closed archives of ``rows`` records each under data_dir/archive."""
    cfg = config.replace_section(config.override(config.Config(), data_dir=str(data_dir)),
                                 "archive", min_free_percent=0.0)
    recorder.Recorder(cfg).record_files([str(CAPTURE)])
    archive_dir = data_dir / "archive"
    (template,) = archive.list_archives(archive_dir)
    out = []
    for i in range(archives):
        path = archive_dir / archive.archive_name(start + i * HOUR)
        shutil.copyfile(template, path)
        os.chmod(path, 0o644)
        _grow(path, rows, start + i * HOUR)
        archive.close_archive(path)
        out.append(path)
    template.unlink()
    return out


def _grow(path: Path, rows: int, hour: float) -> None:
    """Copy the file's rows into itself up to ``rows``, then spread them over the hour."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    cols = ", ".join(archive.FLOW_NAMES)
    while (have := conn.execute("SELECT count(*) FROM flows").fetchone()[0]) < rows:
        conn.execute(f"INSERT INTO flows ({cols}) SELECT {cols} FROM flows LIMIT ?",
                     (min(have, rows - have),))
    conn.execute("UPDATE flows SET stime = ? + (rowid % 3600), ltime = ? + (rowid % 3600) + 1, dur = 1,"
                 " sbytes = abs(random() % 10000000), seq = rowid", (hour, hour))
    conn.close()


@dataclass
class WebServer:
    """A ``flowtap web`` subprocess, logged in."""

    proc: subprocess.Popen
    base: str
    opener: urllib.request.OpenerDirector

    def get(self, url: str, timeout: float = 120) -> tuple[int, bytes]:
        try:
            with self.opener.open(self.base + url, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def vm(self, key: str) -> int:
        """A VmHWM/VmRSS figure of the process, in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
        raise RuntimeError(f"no {key}")

    def reset_peak(self) -> bool:
        """Start VmHWM afresh from the current RSS (``clear_refs`` 5; the setup page's argon2 hash
        otherwise holds the peak). False where the kernel does not allow it."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(data_dir: Path, work: Path, pythonpath: str | None = None) -> WebServer:
    """Start ``flowtap web`` on a free loopback port and log in through the setup page."""
    port = free_port()
    cfg = work / "flowtap.toml"
    cfg.write_text('[sensor]\nid = "bench"\n')
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-c", "from appliance.cli import cli; cli()", "web", "-c", str(cfg),
           "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
           "--runtime-dir", str(work / "run")]
    log = (work / "web.log").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=work)
    log.close()
    server = WebServer(proc, f"http://127.0.0.1:{port}",
                       urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar())))
    try:
        _log_in(server, re.search(r"setup token: (\S+)", proc.stdout.readline()).group(1))
    except BaseException:
        server.stop()
        raise
    return server


def _log_in(server: WebServer, token: str) -> None:
    """Set the admin password through the setup page (the opener keeps the session)."""
    for _ in range(100):
        try:
            page = server.get("/setup", timeout=5)[1].decode()
            break
        except OSError:
            time.sleep(0.1)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrf_token": csrf, "token": token, "password": PASSWORD,
                                   "confirm": PASSWORD}).encode()
    server.opener.open(f"{server.base}/setup", form, timeout=30).read()


def measure(server: WebServer) -> dict[str, float]:
    """Peak RSS (MiB) before and after the deep page, its status and seconds. The peak is reset
    after the warm-up page where the kernel allows (``reset``)."""
    status, _ = server.get(DEEP.replace("page=2000", "page=1"))
    assert status == 200, status
    startup = server.vm("VmHWM")
    reset = server.reset_peak()
    before = server.vm("VmHWM")
    t0 = time.monotonic()
    status, body = server.get(DEEP)
    secs = time.monotonic() - t0
    return {"status": status, "seconds": secs, "hwm_startup": startup / 1024, "reset": reset,
            "hwm_before": before / 1024,
            "hwm_after": server.vm("VmHWM") / 1024, "rss_after": server.vm("VmRSS") / 1024,
            "rows": body.count(b"<tr")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archives", type=int, default=4)
    ap.add_argument("--rows", type=int, default=120_000, help="records per archive")
    ap.add_argument("--pythonpath", help="run the web process from this copy of the package")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="web-deep-"))
    try:
        t0 = time.monotonic()
        build(work / "data", args.archives, args.rows)
        print(f"built {args.archives} archives x {args.rows:,} rows in {time.monotonic() - t0:.1f} s")
        server = serve(work / "data", work, args.pythonpath)
        try:
            m = measure(server)
        finally:
            server.stop()
        print(f"{DEEP}: status {m['status']} in {m['seconds']:.2f} s; peak RSS (VmHWM) "
              f"{m['hwm_startup']:.1f} MiB after start, setup and page 1"
              f"{', reset to' if m['reset'] else ','} {m['hwm_before']:.1f} MiB before the deep page, "
              f"{m['hwm_after']:.1f} MiB after it; RSS after {m['rss_after']:.1f} MiB")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
