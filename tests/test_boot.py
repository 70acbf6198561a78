"""The appliance image, booted (issue 18): ``image/build.sh --arch amd64`` makes the same image as
the Raspberry Pi one (install.sh, units, boot / read-only root / data partitions) with Debian's
amd64 kernel, and QEMU boots it by direct kernel boot (the kernel, initramfs and command line are
read from the image's own boot partition). Nobody logs in: like a buyer, the test only has the
serial console, the two cables and the management network.

    h1 (tap, 10.78.0.1) ── eth0 ┐
                               ├ br0 in the VM ── recorder ── archives on /data
    h2 (tap, 10.78.0.2) ── eth1 ┘
    127.0.0.1:PORT ── QEMU user network (restrict=on: no way out) ── eth2 (DHCP) ── nginx :443

1. first boot: the setup token and the TLS fingerprint appear on the serial console (the login
   screen, /run/issue.d); the page answers on the management side and not from h1;
2. h1 and h2 exchange ICMP (MTU-size, TTL kept), UDP and TCP through the bridge; the archives,
   downloaded through the page after logging in with the setup token, hold exactly the packets
   the hosts' own counters show;
3. power cuts: QEMU is killed with SIGKILL while the recorder writes, and booted again
   (FLOWTAP_BOOT_CYCLES times in all, 2 by default, 10 in `make boot-test`); between boots the
   data partition is read offline (a copy, e2fsck, debugfs): closed archives pass integrity_check
   and never change, the open one recovers, and what was committed is all there;
4. the recorder is stopped with SIGSTOP (on the boot after the first power cut, through the
   kernel command line: see WATCHDOG_TRIGGER) and systemd's watchdog restarts it while the bridge
   keeps forwarding; this runs before step 3's remaining cuts, so a short run checks it early;
5. the boot and root partitions are byte-identical after every boot and power cut: only the data
   partition takes writes.

The Debian trees are cached by image/build.sh ($FLOWTAP_IMAGE_CACHE, /var/cache/flowtap-image);
FLOWTAP_BOOT_IMAGE=PATH boots an image built before instead of building one. FLOWTAP_BOOT_ACCEL
picks QEMU's accelerator (tcg by default: CI machines have no KVM). Each step prints its time.
"""
from __future__ import annotations

import fcntl
import hashlib
import http.client
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "image" / "build.sh"
CYCLES = int(os.environ.get("FLOWTAP_BOOT_CYCLES", "2"))
ACCEL = os.environ.get("FLOWTAP_BOOT_ACCEL", "tcg")
CARD_EXTRA_MIB = 512                     # the "card" is bigger than the image: first boot grows /data
HOSTS = {"h1": "10.78.0.1", "h2": "10.78.0.2"}
MGMT_GUEST = "10.0.2.15"                 # QEMU's user network gives the VM this address by DHCP
PASSWORD = "quiet lantern orbits seventeen"
TICKER_PORT, SINK_PORT, UDP_PORT, TRIGGER_PORT = 7001, 7002, 7003, 7999
COMMIT_INTERVAL = 5.0                    # archive.commit_interval's default, which the image keeps
BOOT_TIMEOUT = float(os.environ.get("FLOWTAP_BOOT_TIMEOUT", "600"))
# FLOWTAP_BOOT_DEBUG=1: the whole journal on the serial console (console-N.log), for a failure
# that only the box's logs explain. Off by default: the console is what a buyer sees.
DEBUG_CMDLINE = "systemd.journald.forward_to_console=1" if os.environ.get("FLOWTAP_BOOT_DEBUG") else ""

pytestmark = [pytest.mark.slow, pytest.mark.live]

# Runs inside a namespace (ip netns exec NS python3 -c TRAFFIC MODE ARGS): the hosts' side.
TRAFFIC = r'''
import hashlib, json, socket, sys, time
mode, args = sys.argv[1], sys.argv[2:]
def say(**kw): print(json.dumps(kw), flush=True)
def pattern(n): return (bytes(range(256)) * (n // 256 + 1))[:n]
def exchange(host, port, data):
    s = socket.create_connection((host, port), timeout=5)
    sport = s.getsockname()[1]
    s.sendall(data); s.shutdown(socket.SHUT_WR)
    while s.recv(65536): pass
    s.close()
    return sport
if mode == "tcp-sink":                      # PORT: every connection's bytes and SHA-256
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(args[0]))); srv.listen(64)
    while True:
        c, peer = srv.accept(); c.settimeout(10); h = hashlib.sha256(); n = 0
        try:
            while (b := c.recv(65536)):
                h.update(b); n += len(b)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        c.close(); say(sport=peer[1], bytes=n, sha=h.hexdigest())
elif mode == "tcp-send":                    # HOST PORT SIZE
    data = pattern(int(args[2]))
    say(sport=exchange(args[0], int(args[1]), data), bytes=len(data), sha=hashlib.sha256(data).hexdigest())
elif mode == "ticker":                      # HOST PORT: a short connection every 0.5 s, forever
    while True:
        try:
            sport = exchange(args[0], int(args[1]), b"tick" * 25)
            say(sport=sport, closed=time.time())
        except OSError:
            pass
        time.sleep(0.5)
elif mode == "udp-sink":                    # PORT COUNT SECONDS
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(args[0])))
    s.settimeout(float(args[2])); got = 0
    try:
        while got < int(args[1]):
            s.recv(65536); got += 1
    except socket.timeout:
        pass
    say(received=got)
elif mode == "udp-send":                    # HOST PORT COUNT SIZE
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((args[0], int(args[1])))
    for _ in range(int(args[2])):
        s.send(pattern(int(args[3]))); time.sleep(0.01)
    say(sport=s.getsockname()[1], sent=int(args[2]))
elif mode == "connect":                     # HOST PORT SECONDS: does anything answer?
    try:
        socket.create_connection((args[0], int(args[1])), timeout=float(args[2])).close(); say(ok=True)
    except OSError as e:
        say(ok=False, error=str(e))
'''


# --- reporting --------------------------------------------------------------------------------

@dataclass
class Figures:
    """What `make boot-test` prints and bench/RESULTS.md quotes: step timings and counts."""

    say: object
    data: dict = field(default_factory=dict)

    def note(self, key: str, value: object) -> None:
        self.data[key] = value
        self.say(f"boot-test: {key}: {value}")

    def save(self) -> None:
        out = os.environ.get("FLOWTAP_BOOT_REPORT")
        if out:
            Path(out).write_text(json.dumps(self.data, indent=1, default=str) + "\n")


# --- the card: an image file with three partitions ----------------------------------------------

@dataclass
class Partition:
    start: int           # bytes
    size: int


def partitions(card: Path) -> list[Partition]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(card)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [Partition(p["start"] * sector, p["size"] * sector) for p in table["partitions"]]


def partition_digest(card: Path, part: Partition) -> str:
    h = hashlib.sha256()
    with open(card, "rb") as f:
        f.seek(part.start)
        left = part.size
        while left:
            chunk = f.read(min(left, 1 << 22))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def boot_file(card: Path, boot: Partition, name: str, dest: Path) -> Path:
    """A file from the FAT boot partition, read with mtools (no mount)."""
    subprocess.run(["mcopy", "-n", "-i", f"{card}@@{boot.start}", f"::{name}", str(dest)],
                   check=True, capture_output=True)
    return dest


def read_data_partition(card: Path, data: Partition, work: Path) -> Path:
    """The archive directory as the next boot will find it: a copy of the data partition, its
    journal replayed by e2fsck (as at boot), the directory taken out with debugfs. The card
    itself is not touched."""
    copy = work / "data.img"
    with open(card, "rb") as src, open(copy, "wb") as dst:
        src.seek(data.start)
        left = data.size
        while left:
            chunk = src.read(min(left, 1 << 22))
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)
            left -= len(chunk)
        dst.truncate(data.size)
    fsck = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
    assert fsck.returncode <= 1, f"e2fsck found damage on /data after a power cut:\n{fsck.stdout}"
    out = work / "data"
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump /flowtap/archive {out}", str(copy)],
                   check=True, capture_output=True)
    copy.unlink()
    return out / "archive"


# --- archives -----------------------------------------------------------------------------------

def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def flows(path: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM flows")]
    finally:
        conn.close()


def archive_state(path: Path) -> str | None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM archive_info WHERE key = 'state'").fetchone()
        return json.loads(row[0]) if row else None
    finally:
        conn.close()


@dataclass
class Snapshot:
    """The archives on /data after a power cut: closed ones by digest, the open one recovered
    in a copy (SQLite replays its WAL) with the records it holds."""

    closed: dict[str, str]
    open_name: str | None
    open_records: list[dict]


def snapshot(archive_dir: Path, scratch: Path) -> Snapshot:
    closed, open_name, open_records = {}, None, []
    for p in sorted(archive_dir.glob("flows-*.sqlite")):
        if not p.stat().st_mode & 0o222:
            assert integrity(p) == "ok", f"closed archive {p.name} fails integrity_check"
            closed[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
            continue
        assert open_name is None, f"two open archives: {open_name}, {p.name}"
        open_name = p.name
        scratch.mkdir(exist_ok=True)
        for f in archive_dir.glob(p.name + "*"):
            shutil.copy(f, scratch / f.name)
        conn = sqlite3.connect(scratch / p.name)           # replays the WAL, as recovery does
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", \
            f"open archive {p.name} fails integrity_check after the power cut"
        conn.close()
        open_records = flows(scratch / p.name)
    return Snapshot(closed, open_name, open_records)


# --- the network: two taps in namespaces, held open across power cuts -----------------------------

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Hosts:
    """Namespaces h1 and h2, each with a tap as its only interface. The test holds the taps'
    file descriptors, so they outlive every QEMU: a power cut is a dead box, not a pulled cable."""

    prefix: str = field(default_factory=lambda: f"ftb{os.getpid()}")
    fds: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def up(self) -> None:
        for host, addr in HOSTS.items():
            ns, tap = self.ns(host), f"{self.prefix}{host}"
            ip("netns", "add", ns)
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
            self.fds[host] = fd
            ip("link", "set", tap, "netns", ns)
            ip("-n", ns, "link", "set", tap, "name", "eth0")
            # No IPv6 on the hosts: every frame on the wire is one the test sent (and ARP).
            self.run(host, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.run(host, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for fd in self.fds.values():
            os.close(fd)
        for host in HOSTS:
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)

    def run(self, host: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def traffic(self, host: str, *args: object, timeout: float = 120) -> list[dict]:
        proc = self.run(host, sys.executable, "-c", TRAFFIC, *map(str, args), timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    def background(self, host: str, *args: object, out: Path) -> subprocess.Popen:
        with open(out, "w") as f:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), sys.executable, "-c", TRAFFIC,
                                     *map(str, args)], stdout=f, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def counters(self, host: str) -> dict[str, int]:
        stats = json.loads(ip("-n", self.ns(host), "-s", "-j", "link", "show", "eth0"))[0]["stats64"]
        return {"tx": stats["tx"]["packets"], "rx": stats["rx"]["packets"]}


def lines(path: Path) -> list[dict]:
    """The complete JSON lines a helper wrote so far (it may be half way through the next)."""
    return [json.loads(s) for s in path.read_text().split("\n")[:-1] if s.strip()]


# --- the machine ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Machine:
    """QEMU with the card, the two taps and the management network; one process per boot."""

    card: Path
    kernel: Path
    initrd: Path
    cmdline: str
    hosts: Hosts
    work: Path
    https_port: int = field(default_factory=free_port)
    plain_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    boots: int = 0
    console: Path | None = None

    def start(self, extra_cmdline: str = "") -> None:
        self.boots += 1
        self.console = self.work / f"console-{self.boots}.log"
        fd1, fd2 = self.hosts.fds["h1"], self.hosts.fds["h2"]
        mgmt = (f"user,id=m,restrict=on,hostfwd=tcp:127.0.0.1:{self.https_port}-:443,"
                f"hostfwd=tcp:127.0.0.1:{self.plain_port}-:8080")
        args = ["qemu-system-x86_64", "-accel", ACCEL, "-cpu", "max", "-smp", "2", "-m", "1024",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", f"file:{self.console}",
                "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", " ".join(filter(None, (self.cmdline, DEBUG_CMDLINE, extra_cmdline))),
                "-drive", f"file={self.card},format=raw,if=virtio,cache=writeback",
                "-device", "virtio-rng-pci",
                "-netdev", f"tap,id=t1,fd={fd1}", "-device", "virtio-net-pci,netdev=t1,mac=52:54:00:78:00:01,addr=0x4",
                "-netdev", f"tap,id=t2,fd={fd2}", "-device", "virtio-net-pci,netdev=t2,mac=52:54:00:78:00:02,addr=0x5",
                "-netdev", mgmt, "-device", "virtio-net-pci,netdev=m,mac=52:54:00:78:00:03,addr=0x6"]
        with open(self.work / f"qemu-{self.boots}.err", "w") as err:
            self.proc = subprocess.Popen(args, pass_fds=(fd1, fd2), stdout=subprocess.DEVNULL, stderr=err)

    def power_cut(self) -> None:
        """SIGKILL: the guest gets no warning, like a pulled plug."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console and self.console.exists() else ""

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, \
            f"QEMU exited ({self.proc and self.proc.returncode}):\n" + \
            (self.work / f"qemu-{self.boots}.err").read_text()[-2000:] + self.console_text()[-4000:]

    def wait_console(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            if m := re.search(pattern, self.console_text()):
                return m
            time.sleep(1)
        raise AssertionError(f"no /{pattern}/ on the serial console in {timeout:.0f} s:\n"
                             + self.console_text()[-4000:])


# --- the page, as a browser would use it ------------------------------------------------------------

class Page:
    """HTTPS to the management side with a cookie jar, trusting only the certificate whose
    fingerprint the console showed."""

    def __init__(self, port: int, cafile: Path) -> None:
        self.base = f"https://127.0.0.1:{port}"
        ctx = ssl.create_default_context(cafile=str(cafile))
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                                  urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str, timeout: float = 60) -> tuple[int, bytes]:
        return self._open(urllib.request.Request(self.base + path), timeout)

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, bytes]:
        form = dict(fields, csrf_token=self.csrf(path))
        req = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(form).encode())
        return self._open(req, 120)

    def csrf(self, path: str) -> str:
        status, body = self.get(path)
        m = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        assert m, f"no CSRF field on {path} ({status})"
        return m.group(1).decode()

    def _open(self, req: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
        try:
            with self.opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def login(self) -> None:
        """A reboot ends every session: log in again with the admin password."""
        code, body = self.post("/login", {"password": PASSWORD})
        assert code == 200 and b'name="password"' not in body, body[:800]

    def archives(self) -> list[bytes]:
        status, body = self.get("/archives")
        assert status == 200 and b'type="password"' not in body, body[:500]    # not the login form
        return sorted(set(re.findall(rb"/archives/(flows-[0-9TZ-]+\.sqlite)/sqlite", body)), key=bytes)

    def download(self, name: bytes | str, dest: Path) -> Path:
        name = name.decode() if isinstance(name, bytes) else name
        status, body = self.get(f"/archives/{name}/sqlite", timeout=300)
        assert status == 200, body[:500]
        dest.write_bytes(body)
        return dest

    def status(self) -> dict:
        status, body = self.get("/api/status")
        assert status == 200, body[:500]
        return json.loads(body)


def server_certificate(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port), timeout=10)


def fingerprint(pem: str) -> str:
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def wait_recording(machine: Machine, page: Page, timeout: float = BOOT_TIMEOUT) -> None:
    """Until /healthz (public) says the recorder records: a fresh status in state recording."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        machine.alive()
        try:
            last = page.get("/healthz", timeout=10)
            if last[0] == 200:
                return
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            last = e
        time.sleep(2)
    raise AssertionError(f"not recording {timeout:.0f} s after boot: {last}\n" + machine.console_text()[-3000:])


# --- the run: one appliance, booted several times, shared by the steps below ------------------------

@dataclass
class Appliance:
    machine: Machine
    hosts: Hosts
    work: Path
    figures: Figures
    parts: list[Partition]
    system_digests: list[str]
    page: Page | None = None
    token: str = ""
    snapshots: list[Snapshot] = field(default_factory=list)
    cuts: int = 0
    ticker: subprocess.Popen | None = None
    recording_since: float = 0.0
    lost: list[str] = field(default_factory=list)


def require_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("the boot test needs root (taps, namespaces, the image build)")
    for tool in ("qemu-system-x86_64", "mmdebstrap", "mcopy", "sfdisk", "debugfs", "e2fsck"):
        assert shutil.which(tool), f"{tool} not found: deps/install.sh test (deps/packages.txt)"
    assert Path("/dev/net/tun").exists(), "no /dev/net/tun"


def build_image(work: Path, figures: Figures) -> Path:
    given = os.environ.get("FLOWTAP_BOOT_IMAGE")
    if given:
        return Path(given)
    started = time.monotonic()
    env = dict(os.environ, FLOWTAP_IMAGE_CACHE=os.environ.get("FLOWTAP_IMAGE_CACHE", "/var/cache/flowtap-image"))
    proc = subprocess.run([str(BUILD), "--arch", "amd64", str(work / "out")], capture_output=True,
                          text=True, timeout=3600, env=env)
    assert proc.returncode == 0, f"build.sh failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    figures.note("image build (s)", round(time.monotonic() - started))
    (image,) = (work / "out").glob("flowtap-*-debian-amd64.img")
    return image


@pytest.fixture(scope="module")
def appliance(tmp_path_factory, pytestconfig):
    require_tools()
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    figures = Figures(say=lambda s: reporter.write_line(s) if reporter else print(s))
    work = tmp_path_factory.mktemp("boot")
    image = build_image(work, figures)
    card = work / "card.img"
    shutil.copyfile(image, card)
    with open(card, "r+b") as f:
        f.truncate(card.stat().st_size + CARD_EXTRA_MIB * 1024 * 1024)
    parts = partitions(card)
    assert len(parts) == 3, parts
    kernel = boot_file(card, parts[0], "vmlinuz", work / "vmlinuz")
    initrd = boot_file(card, parts[0], "initrd.img", work / "initrd.img")
    cmdline = boot_file(card, parts[0], "cmdline.txt", work / "cmdline.txt").read_text().strip()
    assert "console=ttyS0" in cmdline and "root=PARTUUID=" in cmdline, cmdline
    hosts = Hosts()
    try:
        hosts.up()
        machine = Machine(card, kernel, initrd, cmdline, hosts, work)
        app = Appliance(machine, hosts, work, figures, parts,
                        [partition_digest(card, p) for p in parts[:2]])
        hosts.background("h2", "tcp-sink", SINK_PORT, out=work / "sink.jsonl")
        hosts.background("h2", "tcp-sink", TICKER_PORT, out=work / "ticker-sink.jsonl")
        yield app
    finally:
        if "machine" in locals() and machine.proc is not None:
            machine.power_cut()
        hosts.close()
        figures.save()


def step(app: Appliance, name: str, started: float) -> None:
    app.figures.note(f"{name} (s)", round(time.monotonic() - started, 1))


# --- step 1 ------------------------------------------------------------------------------------------

def test_first_boot_shows_token_and_fingerprint_and_serves_the_management_side_only(appliance):
    app, started = appliance, time.monotonic()
    app.machine.start()
    m = app.machine.wait_console(r"setup token (\S+)\s+TLS certificate SHA-256 fingerprint ([0-9A-F:]{95})")
    app.token, shown = m.group(1), m.group(2)
    app.figures.note("first boot: token on the console (s)", round(time.monotonic() - started, 1))
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", app.token), app.token

    # The certificate nginx serves is the one whose fingerprint the console showed.
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        app.machine.alive()
        try:
            pem = server_certificate(app.machine.https_port)
            break
        except OSError:
            assert time.monotonic() < deadline, "nginx never answered on the management side"
            time.sleep(2)
    assert fingerprint(pem) == shown
    cafile = app.work / "sensor.pem"
    cafile.write_text(pem)
    app.page = Page(app.machine.https_port, cafile)
    wait_recording(app.machine, app.page)
    app.figures.note("first boot: recording (s)", round(time.monotonic() - started, 1))

    # Before any password: the page sends a browser to the setup form, which names the token.
    code, body = app.page.get("/")
    assert code == 200 and b'name="token"' in body

    # The page itself (127.0.0.1:8080 in the box) is not reachable from the management side...
    with pytest.raises((OSError, urllib.error.URLError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{app.machine.plain_port}/healthz", timeout=10).read()
    # ...and the tapped side reaches nothing at all: the box's management address does not answer
    # from h1 (br0 has no address and does not answer ARP).
    app.hosts.run("h1", "ip", "route", "add", "10.0.2.0/24", "dev", "eth0")
    (probe,) = app.hosts.traffic("h1", "connect", MGMT_GUEST, 443, 5)
    app.hosts.run("h1", "ip", "route", "del", "10.0.2.0/24", "dev", "eth0")
    assert probe["ok"] is False, probe
    step(app, "step 1: first boot", started)


# --- step 2 ------------------------------------------------------------------------------------------

def all_records(page: Page, work: Path) -> list[dict]:
    """Every record of every archive, downloaded through the page as SQLite files."""
    out = []
    for i, name in enumerate(page.archives()):
        out += flows(page.download(name, work / f"download-{i}.sqlite"))
    return out


def one(records: list[dict], **match: object) -> dict:
    found = [r for r in records if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} records match {match}"
    return found[0]


def test_hosts_talk_through_the_bridge_and_the_archives_count_every_packet(appliance):
    app, started = appliance, time.monotonic()
    code, body = app.page.post("/setup", {"token": app.token, "password": PASSWORD, "confirm": PASSWORD})
    assert code == 200 and b'name="token"' not in body, body[:800]

    # ICMP at the full 1500-byte MTU, unfragmented (-M do): the bridge neither drops nor changes it.
    ping = app.hosts.run("h1", "ping", "-n", "-c", "20", "-i", "0.2", "-s", "1472", "-M", "do", "-W", "5",
                         HOSTS["h2"])
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", ping.stdout).groups())
    assert sent == received == 20, ping.stdout
    assert set(re.findall(r"ttl=(\d+)", ping.stdout)) == {"64"}, "the bridge must not touch the TTL"
    # UDP: 100 datagrams, every one arrives.
    sink = app.hosts.background("h2", "udp-sink", UDP_PORT, 100, 60, out=app.work / "udp-sink.jsonl")
    time.sleep(1)
    (udp,) = app.hosts.traffic("h1", "udp-send", HOSTS["h2"], UDP_PORT, 100, 1000)
    sink.wait(90)
    assert lines(app.work / "udp-sink.jsonl") == [{"received": 100}]
    # TCP: a megabyte, arriving with the same SHA-256 (no checksum or payload touched).
    (tcp,) = app.hosts.traffic("h1", "tcp-send", HOSTS["h2"], SINK_PORT, 1_000_000)
    deadline = time.monotonic() + 30
    while not any(c["sport"] == tcp["sport"] for c in lines(app.work / "sink.jsonl")):
        assert time.monotonic() < deadline, "h2 never saw the TCP transfer end"
        time.sleep(0.5)
    (got,) = [c for c in lines(app.work / "sink.jsonl") if c["sport"] == tcp["sport"]]
    assert (got["bytes"], got["sha"]) == (tcp["bytes"], tcp["sha"])
    app.figures.note("step 2: traffic sent (s)", round(time.monotonic() - started, 1))

    # The hosts' own counters: what one sent, the other received; the box added nothing.
    counters = {h: app.hosts.counters(h) for h in HOSTS}
    assert counters["h1"]["tx"] == counters["h2"]["rx"] and counters["h2"]["tx"] == counters["h1"]["rx"], counters
    app.figures.note("packets per host (tap counters)", counters)
    wire = counters["h1"]["tx"] + counters["h2"]["tx"]

    # Sessions end (ICMP and UDP after 30 s idle), then the next commit: poll the archives.
    deadline = time.monotonic() + 240
    while True:
        records = all_records(app.page, app.work)
        total = sum(r["spkts"] + r["dpkts"] for r in records)
        if total == wire or time.monotonic() > deadline:
            break
        time.sleep(10)
    app.figures.note("step 2: records in the archives (s)", round(time.monotonic() - started, 1))
    assert total == wire, f"archives hold {total} packets, the hosts' counters {wire}: {records}\n" \
                          f"recorder status: {app.page.status()}"
    icmp = one(records, proto=1, saddr=HOSTS["h1"], daddr=HOSTS["h2"])
    assert (icmp["spkts"], icmp["dpkts"], icmp["sttl"], icmp["dttl"]) == (sent, received, 64, 64)
    assert icmp["sbytes"] >= 20 * 1500 and icmp["dbytes"] >= 20 * 1500
    udp_rec = one(records, proto=17, saddr=HOSTS["h1"], sport=udp["sport"], dport=UDP_PORT)
    assert (udp_rec["spkts"], udp_rec["dpkts"], udp_rec["sappbytes"]) == (100, 0, 100 * 1000)
    tcp_rec = one(records, proto=6, saddr=HOSTS["h1"], sport=tcp["sport"], dport=SINK_PORT)
    assert (tcp_rec["sappbytes"], tcp_rec["dappbytes"]) == (1_000_000, 0)
    app.figures.note("step 2: records / packets", f"{len(records)} records, {total} packets "
                     f"(icmp {sent}+{received}, udp {udp_rec['spkts']}, tcp {tcp_rec['spkts']}+{tcp_rec['dpkts']})")
    step(app, "step 2: traffic and archives", started)


# --- power cuts (step 3; the first one also starts step 4's boot) -----------------------------------

def record_keys(records: list[dict]) -> set[tuple]:
    return {(r["srcid"], r["seq"], r["stime"], r["saddr"], r["sport"], r["daddr"], r["dport"],
             r["spkts"], r["dpkts"]) for r in records}


def ticker_sports(records: list[dict]) -> set[int]:
    return {r["sport"] for r in records if r["proto"] == 6 and r["dport"] == TICKER_PORT}


def check_system_partitions(app: Appliance) -> None:
    """Boot and root partitions: the very bytes of the image (step 5, after every boot)."""
    now = [partition_digest(app.machine.card, p) for p in partitions(app.machine.card)[:2]]
    assert now == app.system_digests, "the boot or root partition changed: it must be read-only"


def cut_and_read(app: Appliance) -> tuple[Snapshot, list[dict], float]:
    """Power cut; then the data partition read offline: the snapshot and every record on it."""
    cut_at = time.time()
    app.machine.power_cut()
    check_system_partitions(app)
    where = app.work / f"cut-{app.cuts}"
    where.mkdir()
    archive_dir = read_data_partition(app.machine.card, partitions(app.machine.card)[2], where)
    snap = snapshot(archive_dir, where / "open")
    on_disk = list(snap.open_records)
    for name in snap.closed:
        on_disk += flows(archive_dir / name)
    return snap, on_disk, cut_at


def check_committed(app: Appliance, committed: list[dict], on_disk: list[dict], cut_at: float) -> None:
    """Everything the page showed committed more than one commit interval before the cut is on
    the disk; the figure: how long before the cut the newest ticker session on disk ended."""
    missing = record_keys(committed) - record_keys(on_disk)
    if missing:             # step 3 fails on it at the end; steps 4 and 5 still get their boots
        app.lost.append(f"cut {app.cuts}: {len(missing)} committed records lost, e.g. {sorted(missing)[:3]}")
        app.figures.note(f"cut {app.cuts}: committed records lost", len(missing))
    ticks = [t for t in lines(app.work / "ticker.jsonl") if app.recording_since + 2 < t["closed"]]
    stored = ticker_sports(on_disk)
    newest = max((t["closed"] for t in ticks if t["sport"] in stored), default=None)
    app.figures.note(f"cut {app.cuts}: records committed / on disk / ticker sessions on disk",
                     f"{len(committed)} / {len(on_disk)} / {len(stored & {t['sport'] for t in ticks})} of {len(ticks)}")
    if newest is not None:
        app.figures.note(f"cut {app.cuts}: newest ticker session on disk ended before the cut (s)",
                         round(cut_at - newest, 1))


def check_recovered(app: Appliance, before: Snapshot) -> None:
    """After the reboot, through the page: closed archives unchanged, the one the cut left open
    closed as "recovered" with every record the disk held."""
    listed = {n.decode() for n in app.page.archives()}
    for name, digest in before.closed.items():
        got = app.page.download(name, app.work / "check.sqlite")
        assert hashlib.sha256(got.read_bytes()).hexdigest() == digest, f"closed archive {name} changed"
    if before.open_name is None:
        return
    assert before.open_name in listed, f"{before.open_name} is gone after the power cut"
    got = app.page.download(before.open_name, app.work / "recovered.sqlite")
    assert integrity(got) == "ok"
    assert archive_state(got) == "recovered"
    assert record_keys(before.open_records) <= record_keys(flows(got)), "records lost in recovery"


def power_cycle(app: Appliance, extra_cmdline: str = "") -> None:
    """Let the ticker's sessions be recorded, cut the power mid-recording, read the disk, boot
    again untouched, and check through the page that the archives recovered."""
    if app.ticker is None:
        app.ticker = app.hosts.background("h1", "ticker", HOSTS["h2"], TICKER_PORT, out=app.work / "ticker.jsonl")
        app.recording_since = time.time()
    time.sleep(25)                                   # several commits' worth of ticker sessions
    started = time.monotonic()
    app.cuts += 1
    committed = all_records(app.page, app.work)      # what the archives held, seen by a reader
    time.sleep(COMMIT_INTERVAL + 1)                  # ...one commit interval ago, at the cut
    snap, on_disk, cut_at = cut_and_read(app)
    if app.snapshots:
        previous = app.snapshots[-1]
        for name, digest in previous.closed.items():
            assert snap.closed.get(name) == digest, f"closed archive {name} changed across a power cut"
        assert previous.open_name in snap.closed, "the archive open at the last cut was not closed"
    check_committed(app, committed, on_disk, cut_at)
    app.figures.note(f"cut {app.cuts}: archives closed / records in the open one",
                     f"{len(snap.closed)} / {len(snap.open_records)}")
    app.machine.start(extra_cmdline)
    wait_recording(app.machine, app.page)
    app.recording_since = time.time()
    app.figures.note(f"cut {app.cuts}: recording again after (s)", round(time.monotonic() - started, 1))
    app.page.login()
    check_recovered(app, snap)
    app.snapshots.append(snap)


# --- step 4 ------------------------------------------------------------------------------------------

# The product has no way to stop its recorder from outside, and must not get one. The test boots
# the image with systemd's own kernel command-line hooks instead (systemd-run-generator,
# systemd-debug-generator): a one-off unit that waits for a UDP datagram to port 7999 on br0 and
# then SIGSTOPs the recorder. The image is not changed; a buyer's command line (cmdline.txt on the
# boot partition) has none of it.
WATCHDOG_TRIGGER = (
    "systemd.unit=multi-user.target systemd.wants=kernel-command-line.service "
    "systemd.run_success_action=none systemd.run_failure_action=none "
    f"systemd.run=\"/bin/sh -c 'until tcpdump -c 1 -n -i br0 udp dst port {TRIGGER_PORT} >/dev/null 2>&1; "
    "do sleep 1; done; systemctl kill --kill-whom=main --signal=SIGSTOP flowtap-recorder.service; "
    "echo flowtap-test: recorder stopped'\"")


def test_watchdog_restarts_a_stopped_recorder_while_the_bridge_forwards(appliance):
    """The first power cut (step 3 checks it like the others) boots with the trigger."""
    app = appliance
    power_cycle(app, WATCHDOG_TRIGGER)
    started = time.monotonic()
    pid = app.page.status()["status"]["pid"]
    deadline = time.monotonic() + 120
    while "flowtap-test: recorder stopped" not in app.machine.console_text():
        assert time.monotonic() < deadline, "the test trigger never stopped the recorder"
        app.hosts.traffic("h1", "udp-send", HOSTS["h2"], TRIGGER_PORT, 1, 10)
        time.sleep(1)
    stopped = time.monotonic()
    # While it is stopped, the bridge forwards: the kernel does that, not the recorder.
    ping = app.hosts.run("h1", "ping", "-n", "-c", "20", "-i", "0.5", "-W", "5", HOSTS["h2"])
    assert " 20 received" in ping.stdout, ping.stdout
    unhealthy = False
    deadline = time.monotonic() + 180
    while True:
        code, _ = app.page.get("/healthz")
        unhealthy |= code == 503
        status = app.page.status()
        if status["recording"] and status["status"]["pid"] != pid:
            break
        assert time.monotonic() < deadline, f"the recorder was not restarted: {status}"
        time.sleep(2)
    app.figures.note("step 4: stopped recorder recording again after (s)", round(time.monotonic() - stopped, 1))
    assert unhealthy, "/healthz never said the stopped recorder was not recording"
    step(app, "step 4: watchdog", started)


# --- step 3 ------------------------------------------------------------------------------------------

def test_power_cuts_lose_at_most_a_commit_interval(appliance):
    """The remaining power cuts (FLOWTAP_BOOT_CYCLES in all, step 4's included)."""
    app, started = appliance, time.monotonic()
    assert CYCLES >= 2, "at least two power cuts"
    while app.cuts < CYCLES:
        power_cycle(app)
    app.figures.note("power cuts survived", app.cuts)
    step(app, "step 3: power cuts", started)
    assert not app.lost, "records committed a commit interval before a power cut were lost:\n" + "\n".join(app.lost)


# --- step 5 ------------------------------------------------------------------------------------------

def test_only_the_data_partition_takes_writes(appliance):
    app, started = appliance, time.monotonic()
    app.machine.power_cut()
    check_system_partitions(app)
    card_size = app.machine.card.stat().st_size
    data = partitions(app.machine.card)[2]
    assert data.size > app.parts[2].size, "the first boot did not grow the data partition"
    assert card_size - (data.start + data.size) < 2 * 1024 * 1024, "the data partition does not reach the end"
    app.figures.note("boots", app.machine.boots)
    step(app, "step 5: read-only root", started)
