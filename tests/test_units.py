"""The systemd side of the appliance: units, users, directories, network and kernel settings.

``systemd-analyze verify`` needs the ExecStart= binaries to exist. The units point at the
installed venv (/opt/flowtap/bin/flowtap), so the verify test copies them into a temporary
directory with ExecStart= rewritten to this checkout's own ``flowtap`` (the one the test suite
runs). The chroot test in test_image.py verifies the real files in place, with ``--root``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from appliance import config as config_mod

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNITS = sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".path"))
NETWORK = sorted((SYSTEMD / "network").iterdir())
VENV_FLOWTAP = "/opt/flowtap/bin/flowtap"
TLS_CERT = "/usr/local/sbin/flowtap-tls-cert"           # systemd/flowtap-tls-cert, installed
WEB_MAX, RECORDER_MAX, ALERTS_MAX = 2.5, 4.0, 1.0


def parse(path: Path) -> list[tuple[str, str, str, str]]:
    """A systemd-style file as (section, key, value, comment block above) in file order."""
    out, section, comment = [], "", []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s:
            comment = []
        elif s.startswith(("#", ";")):
            comment.append(s)
        elif s.startswith("["):
            section, comment = s.strip("[]"), []
        else:
            key, _, value = s.partition("=")
            out.append((section, key.strip(), value.strip(), "\n".join(comment)))
            comment = []
    return out


def values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v, _ in parse(path) if s == section and k == key]


def one(path: Path, key: str, section: str = "Service") -> str:
    found = values(path, key, section)
    assert len(found) == 1, f"{path.name}: [{section}] {key}= set {len(found)} times"
    return found[0]


def systemd_analyze() -> str:
    """The systemd-analyze binary; missing is a failure (CI installs the systemd package)."""
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze not found: apt-get install systemd"
    return path


def flowtap_binary() -> str:
    """This checkout's flowtap console script (the venv the tests run in)."""
    for candidate in (Path(sys.executable).parent / "flowtap", shutil.which("flowtap")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("no flowtap console script next to the test interpreter: run `make build`")


RECORDER = SYSTEMD / "flowtap-recorder.service"
WEB = SYSTEMD / "flowtap-web.service"
ALERTS = SYSTEMD / "flowtap-alerts.service"


# --- verify and security ---------------------------------------------------------------------

def test_every_unit_verifies(tmp_path):
    """systemd-analyze verify, with ExecStart= pointing at this checkout's programs, says nothing."""
    exe = flowtap_binary()
    for unit in UNITS:
        text = unit.read_text().replace(VENV_FLOWTAP, exe).replace(TLS_CERT, str(SYSTEMD / "flowtap-tls-cert"))
        (tmp_path / unit.name).write_text(text)
    dropins = tmp_path / "flowtap-recorder.service.d"
    dropins.mkdir()
    shutil.copy(SYSTEMD / "flowtap-recorder.service.d" / "export.conf.example", dropins / "export.conf")
    proc = subprocess.run([systemd_analyze(), "verify", "--man=no",
                           *(str(tmp_path / u.name) for u in UNITS)],
                          capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys and bad values: every line it prints is a problem.
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), \
        proc.stdout + proc.stderr


def exposure(unit: Path) -> float:
    proc = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def test_security_exposure_levels():
    """systemd-analyze security --offline: web at most 2.5, recorder at most 4.0, alert follower at
    most 1.0 (lower is safer)."""
    web, recorder, alerts = exposure(WEB), exposure(RECORDER), exposure(ALERTS)
    print(f"\nsystemd-analyze security --offline=yes: flowtap-web.service {web}, "
          f"flowtap-recorder.service {recorder}, flowtap-alerts.service {alerts}")
    assert web <= WEB_MAX, f"flowtap-web.service exposure {web} > {WEB_MAX}"
    assert recorder <= RECORDER_MAX, f"flowtap-recorder.service exposure {recorder} > {RECORDER_MAX}"
    assert alerts <= ALERTS_MAX, f"flowtap-alerts.service exposure {alerts} > {ALERTS_MAX}"


WEB_BOUNDED_MAX = 1.5            # flowtap-web with its memory bound (issue 15): at most this


def mebibytes(value: str) -> float:
    """A systemd size (``256M``, ``1G``, bytes) in MiB."""
    m = re.fullmatch(r"(\d+)([KMG]?)", value)
    assert m, value
    return int(m.group(1)) * {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024}[m.group(2)]


def test_web_memory_is_bounded_and_its_exposure_stays_low():
    """MemoryMax= caps the page (above its worst legitimate use: a deep search page of 150 MB and
    two password checks of 64 MiB), MemoryHigh= below it throttles first, the comment says why, and
    the unit's exposure stays at most 1.5."""
    high, most = mebibytes(one(WEB, "MemoryHigh")), mebibytes(one(WEB, "MemoryMax"))
    assert 150 + 2 * 64 <= most <= 512 and 150 <= high < most, (high, most)
    comment = next(c for _, k, _, c in parse(WEB) if k == "MemoryHigh")
    assert "150 MB" in comment and "4 GB" in comment, comment
    score = exposure(WEB)
    print(f"\nflowtap-web.service: MemoryHigh={high:g}M MemoryMax={most:g}M, exposure {score}")
    assert score <= WEB_BOUNDED_MAX, f"flowtap-web.service exposure {score} > {WEB_BOUNDED_MAX}"


# --- the hardening keys (STYLE.md "systemd and image") -----------------------------------------

def test_recorder_hardening_keys():
    r = RECORDER
    assert one(r, "Type") == "notify"
    assert one(r, "WatchdogSec") == "30s"
    assert one(r, "Restart") == "always"
    assert one(r, "User") == "flowtap"
    assert one(r, "ExecStart").startswith(f"{VENV_FLOWTAP} record -c /etc/flowtap/flowtap.toml")
    assert one(r, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(r, "AmbientCapabilities").split() == ["CAP_NET_RAW"]
    assert one(r, "CapabilityBoundingSet").split() == ["CAP_NET_RAW"]
    assert set(one(r, "RestrictAddressFamilies").split()) == {"AF_PACKET", "AF_UNIX"}
    for key, want in {"ProtectSystem": "strict", "StateDirectory": "flowtap",
                      "RuntimeDirectory": "flowtap", "NoNewPrivileges": "yes",
                      "MemoryDenyWriteExecute": "yes", "PrivateUsers": "no",
                      "SystemCallArchitectures": "native", "SystemCallErrorNumber": "EPERM"}.items():
        assert one(r, key) == want, key
    assert values(r, "SystemCallFilter")[0] == "@system-service"


def test_web_hardening_keys():
    w = WEB
    assert one(w, "CapabilityBoundingSet") == ""
    assert one(w, "AmbientCapabilities") == ""
    assert one(w, "User") == "flowtap-web"
    assert one(w, "ExecStart") == f"{VENV_FLOWTAP} web -c /etc/flowtap/flowtap.toml"
    assert one(w, "ReadWritePaths") == "/etc/flowtap"
    assert one(w, "ReadOnlyPaths").lstrip("-") == "/var/lib/flowtap/archive"
    assert one(w, "StateDirectory") == "flowtap/web"
    assert "AF_PACKET" not in one(w, "RestrictAddressFamilies")
    assert one(w, "InaccessiblePaths") == "-/etc/flowtap/tls"          # nginx's key
    for key, want in {"ProtectSystem": "strict", "NoNewPrivileges": "yes",
                      "MemoryDenyWriteExecute": "yes", "PrivateUsers": "yes",
                      "ProtectClock": "yes", "PrivateDevices": "yes"}.items():
        assert one(w, key) == want, key


def test_alerts_hardening_keys():
    """The alert follower: no capabilities, no network, writes only the archive dir and its state."""
    a = ALERTS
    assert one(a, "Type") == "notify"
    assert one(a, "WatchdogSec") == "30s"
    assert one(a, "Restart") == "always"
    assert one(a, "User") == "flowtap" and one(a, "Group") == "flowtap"
    assert one(a, "ExecStart") == f"{VENV_FLOWTAP} alerts follow -c /etc/flowtap/flowtap.toml"
    assert one(a, "CapabilityBoundingSet") == "" and one(a, "AmbientCapabilities") == ""
    assert one(a, "RestrictAddressFamilies").split() == ["AF_UNIX"]
    assert one(a, "ReadWritePaths").lstrip("-") == config_mod.Config().archive.dir
    assert one(a, "StateDirectory") == "flowtap/alerts"
    assert config_mod.Config().alerts.state_path(config_mod.Config().archive.dir) == \
        Path("/var/lib/flowtap/alerts/follow.json")
    for key, want in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateNetwork": "yes",
                      "MemoryDenyWriteExecute": "yes", "PrivateUsers": "yes", "ProtectHome": "yes",
                      "ProtectClock": "yes", "PrivateDevices": "yes", "NotifyAccess": "main",
                      "SystemCallArchitectures": "native", "SystemCallErrorNumber": "EPERM"}.items():
        assert one(a, key) == want, key
    assert values(a, "SystemCallFilter")[0] == "@system-service"


def test_directives_are_sorted_within_sections():
    for path in [*UNITS, *NETWORK, SYSTEMD / "system.conf.d" / "flowtap-watchdog.conf"]:
        sections: dict[str, list[str]] = {}
        for section, key, _, _ in parse(path):
            sections.setdefault(section, []).append(key)
        for section, keys in sections.items():
            assert keys == sorted(keys, key=str.lower), f"{path.name} [{section}]: {keys}"


COMMON = ("AmbientCapabilities", "CapabilityBoundingSet", "MemoryDenyWriteExecute", "PrivateUsers",
          "ProtectSystem", "RestrictAddressFamilies", "StateDirectory", "SystemCallErrorNumber",
          "SystemCallFilter", "UMask")
NON_OBVIOUS = {RECORDER: COMMON + ("IPAddressDeny", "ProtectClock", "RuntimeDirectory", "WatchdogSec"),
               WEB: COMMON + ("ReadOnlyPaths", "ReadWritePaths"),
               ALERTS: COMMON + ("PrivateNetwork", "ReadWritePaths", "SupplementaryGroups", "WatchdogSec")}


def test_non_obvious_directives_are_commented():
    for path, keys in NON_OBVIOUS.items():
        seen = set()
        for section, key, _, comment in parse(path):
            if key in keys and key not in seen:
                seen.add(key)
                assert comment, f"{path.name}: {key}= has no comment above it"


def test_reload_path_unit_reloads_the_recorder():
    path = SYSTEMD / "flowtap-recorder-reload.path"
    assert one(path, "PathChanged", "Path") == "/etc/flowtap/flowtap.toml"
    target = one(path, "Unit", "Path")
    service = SYSTEMD / target
    assert service.exists()
    assert "reload" in one(service, "ExecStart") and "flowtap-recorder.service" in one(service, "ExecStart")
    assert one(service, "Type") == "oneshot"


def test_tls_certificate_is_made_once_per_box(tmp_path):
    """flowtap-tls-cert (run by flowtap-tls-cert.service before nginx) makes a self-signed
    certificate once, keeps it on later runs, and names extra addresses on request; nginx's site
    uses it and proxies to the page's default listen address."""
    tls = tmp_path / "tls"

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(SYSTEMD / "flowtap-tls-cert"), "--dir", str(tls), *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    run()
    assert (tls / "key.pem").stat().st_mode & 0o777 == 0o600
    cert = (tls / "cert.pem").read_bytes()
    assert "keeping" in run().stdout and (tls / "cert.pem").read_bytes() == cert
    run("--force", "192.0.2.7", "sensor.example")
    text = subprocess.run(["openssl", "x509", "-in", str(tls / "cert.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "IP Address:192.0.2.7", "DNS:sensor.example"):
        assert name in text
    unit = SYSTEMD / "flowtap-tls-cert.service"
    assert one(unit, "ExecStart") == TLS_CERT
    assert one(unit, "ConditionPathExists", "Unit") == "!/etc/flowtap/tls/cert.pem"
    assert "nginx.service" in one(unit, "Before", "Unit").split()
    assert one(unit, "WantedBy", "Install") == "nginx.service"
    site = (SYSTEMD / "nginx-flowtap.conf").read_text()
    assert "ssl_certificate /etc/flowtap/tls/cert.pem;" in site
    assert f"proxy_pass http://{config_mod.Config().web.listen};" in site


def nginx_server_blocks(text: str) -> list[str]:
    """The ``server { ... }`` blocks of an nginx file, comments removed."""
    text = re.sub(r"#[^\n]*", "", text)
    blocks = []
    for m in re.finditer(r"\bserver\s*\{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        blocks.append(text[m.start():i])
    return blocks


HSTS = 'add_header Strict-Transport-Security "max-age=31536000" always;'


def test_nginx_sends_hsts_over_tls_only(tmp_path):
    """Every TLS server of nginx's site sends Strict-Transport-Security (on every answer, errors
    too: ``always``), no plain-HTTP server does, and no location has an add_header of its own (it
    would drop the server's); ``nginx -t`` accepts the site with a certificate the box would make."""
    site = (SYSTEMD / "nginx-flowtap.conf").read_text()
    blocks = nginx_server_blocks(site)
    assert blocks
    for block in blocks:
        tls = re.search(r"^\s*listen\s[^;]*\bssl\b", block, re.M)
        headers = [" ".join(line.split()) for line in block.splitlines() if "add_header" in line]
        assert headers == ([HSTS] if tls else []), block
    nginx = "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx not found: apt-get install nginx"
    tls_dir = tmp_path / "tls"
    subprocess.run([str(SYSTEMD / "flowtap-tls-cert"), "--dir", str(tls_dir)], check=True,
                   capture_output=True, timeout=60)
    (tmp_path / "flowtap.conf").write_text(site.replace("/etc/flowtap/tls", str(tls_dir)))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\nevents {{}}\nhttp {{ include {tmp_path / 'flowtap.conf'}; }}\n")
    proc = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                           "-e", str(tmp_path / "error.log")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "test is successful" in proc.stderr, proc.stderr


# --- users and directories ---------------------------------------------------------------------

def test_sysusers_and_tmpfiles_create_users_and_directories(tmp_path):
    """systemd-sysusers and systemd-tmpfiles --root make the users and directories the units need."""
    root = tmp_path
    for d in ("etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").touch()
    (root / "etc/group").touch()
    shutil.copy(SYSTEMD / "sysusers.d/flowtap.conf", root / "usr/lib/sysusers.d/")
    shutil.copy(SYSTEMD / "tmpfiles.d/flowtap.conf", root / "usr/lib/tmpfiles.d/")
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        assert shutil.which(tool), f"{tool} not found: apt-get install systemd"
    subprocess.run(["systemd-sysusers", f"--root={root}", "flowtap.conf"], check=True,
                   capture_output=True, timeout=60)
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    for unit in (RECORDER, WEB, ALERTS):
        assert one(unit, "User") in users and one(unit, "Group") in groups
    assert "flowtap-web" in groups["flowtap"][3].split(","), "flowtap-web must read the archives"
    if os.geteuid() != 0:
        pytest.fail("the directory ownership check needs root (CI runs as root)")
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", "flowtap.conf"], check=True,
                   capture_output=True, timeout=60)
    uid = {name: int(f[2]) for name, f in users.items()}
    gid = {name: int(f[2]) for name, f in groups.items()}
    expect = {"etc/flowtap": (0, gid["flowtap-web"], 0o775),
              "var/lib/flowtap": (uid["flowtap"], gid["flowtap"], 0o750),
              "var/lib/flowtap/archive": (uid["flowtap"], gid["flowtap"], 0o750),
              "var/lib/flowtap/web": (uid["flowtap-web"], gid["flowtap-web"], 0o700)}
    for rel, (u, g, mode) in expect.items():
        st = (root / rel).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (u, g, mode), rel


# --- network, sysctl, watchdog -----------------------------------------------------------------

def networkd_keys() -> bytes:
    for p in ("/lib/systemd/systemd-networkd", "/usr/lib/systemd/systemd-networkd"):
        if Path(p).exists():
            return Path(p).read_bytes()
    pytest.fail("systemd-networkd not found: apt-get install systemd")


def test_network_files_use_keys_networkd_knows():
    """Every Section.Key is in systemd-networkd's own parser table (a typo is silently ignored)."""
    table = networkd_keys()
    for path in NETWORK:
        for section, key, _, _ in parse(path):
            assert b"\0" + f"{section}.{key}".encode() + b"\0" in table, f"{path.name}: [{section}] {key}="


def test_bridge_is_transparent():
    netdev = SYSTEMD / "network/10-br0.netdev"
    assert one(netdev, "Kind", "NetDev") == "bridge" and one(netdev, "Name", "NetDev") == "br0"
    assert one(netdev, "STP", "Bridge") == "no"
    ports = SYSTEMD / "network/20-br0-ports.network"
    assert one(ports, "Name", "Match").split() == ["eth0", "eth1"]
    assert one(ports, "Bridge", "Network") == "br0"
    for path in (ports, SYSTEMD / "network/30-br0.network"):
        assert one(path, "LinkLocalAddressing", "Network") == "no"
        assert one(path, "IPv6AcceptRA", "Network") == "no"
        assert one(path, "Promiscuous", "Link") == "yes"
        assert not values(path, "Address", "Network") and not values(path, "DHCP", "Network")[1:]
    mgmt = SYSTEMD / "network/40-mgmt.network"
    assert one(mgmt, "DHCP", "Network") == "yes"
    assert "br0" not in one(mgmt, "Name", "Match")


NETWORKD_RUN = r"""
set -u
cfg=$1
mount -o remount,ro /sys                  # no udev here: networkd must not wait for it
mount --bind "$cfg" /etc/systemd/network
mount -t tmpfs tmpfs /usr/lib/systemd/network          # only flowtap's files
mkdir -p /run/systemd/netif 2>/dev/null; mount -t tmpfs -o mode=0755 tmpfs /run/systemd/netif
mkdir -p /run/systemd/netif/links /run/systemd/netif/leases /run/systemd/netif/lldp
chown -R systemd-network:systemd-network /run/systemd/netif
/lib/systemd/systemd-networkd > "$cfg/networkd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    [ "$(cat /sys/class/net/eth0/master/ifindex /sys/class/net/eth1/master/ifindex 2>/dev/null | wc -l)" = 2 ] \
        && [ -e /sys/class/net/br0/bridge ] && break
    sleep 0.2
done
sleep 1
for f in bridge/stp_state bridge/group_fwd_mask bridge/multicast_snooping flags; do
    echo "br0.$f $(cat /sys/class/net/br0/$f 2>/dev/null)"
done
for p in eth0 eth1; do
    echo "$p.master $(basename "$(readlink /sys/class/net/$p/master)")"
    echo "$p.flags $(cat /sys/class/net/$p/flags)"
done
echo "addresses $(ip -o addr show dev br0; ip -o addr show dev eth0; ip -o addr show dev eth1)" | tr '\n' ' '
echo
kill $pid; wait $pid 2>/dev/null
"""


@pytest.mark.live
def test_networkd_makes_the_transparent_bridge(tmp_path):
    """systemd-networkd, run with only flowtap's network files in a network namespace with
    eth0, eth1 and eth2, makes br0 from eth0 + eth1: STP off, link-local frames forwarded,
    multicast flooded, br0 and ports promiscuous and without ARP, no address anywhere on them."""
    if os.geteuid() != 0:
        pytest.fail("needs root: network namespaces")
    networkd_keys()
    cfg = Path(tempfile.mkdtemp(prefix="flowtap-networkd-"))
    try:
        cfg.chmod(0o755)                   # networkd reads it as systemd-network
        for f in NETWORK:
            shutil.copy(f, cfg / f.name)
        ns = f"ftnd{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            for i in range(3):
                subprocess.run(["ip", "-n", ns, "link", "add", f"eth{i}", "type", "veth", "peer",
                                "name", f"peer{i}"], check=True)
                subprocess.run(["ip", "-n", ns, "link", "set", f"peer{i}", "up"], check=True)
            proc = subprocess.run(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation",
                                   "private", "sh", "-c", NETWORKD_RUN, "sh", str(cfg)],
                                  capture_output=True, text=True, timeout=60)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        log = (cfg / "networkd.log").read_text() if (cfg / "networkd.log").exists() else ""
        report = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
        detail = f"{proc.stdout}\n{proc.stderr}\nnetworkd:\n{log}"
        assert "could not be set" not in log and "Failed" not in log, detail
        assert report.get("br0.bridge/stp_state") == "0", detail
        assert report.get("br0.bridge/group_fwd_mask") == "0xfff8", detail
        assert report.get("br0.bridge/multicast_snooping") == "0", detail
        IFF_NOARP, IFF_PROMISC = 0x80, 0x100
        for dev in ("br0", "eth0", "eth1"):
            flags = int(report.get(f"{dev}.flags", "0"), 16)
            assert flags & IFF_PROMISC and flags & IFF_NOARP, f"{dev} flags {flags:#x}\n{detail}"
        assert report.get("eth0.master") == report.get("eth1.master") == "br0", detail
        assert " inet" not in report.get("addresses", ""), detail
    finally:
        shutil.rmtree(cfg, ignore_errors=True)


def test_sysctl_turns_bridge_netfilter_off():
    lines = [line for line in (SYSTEMD / "sysctl.d/90-flowtap.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    settings = {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines)}
    for family in ("arptables", "ip6tables", "iptables"):
        # "-": ignored when br_netfilter is not loaded (the key does not exist then).
        assert settings[f"-net.bridge.bridge-nf-call-{family}"] == "0"


def test_hardware_watchdog():
    conf = SYSTEMD / "system.conf.d/flowtap-watchdog.conf"
    assert one(conf, "RuntimeWatchdogSec", "Manager") == "15s"


# --- the default configuration -------------------------------------------------------------------

DEFAULT_TOML = SYSTEMD / "etc/flowtap.toml"


def test_default_config_is_all_defaults_but_the_bridge():
    cfg = config_mod.load(DEFAULT_TOML)
    want = config_mod.replace_section(config_mod.Config(), "capture", interfaces=("br0",))
    assert cfg == want


def test_default_config_lists_every_key_at_its_default():
    """Uncommenting every ``# key = value`` line yields the defaults (sensor.id aside: host name)."""
    text = re.sub(r"(?m)^# (\w+ = .*)$", r"\1", DEFAULT_TOML.read_text())
    data = tomllib.loads(text)
    defaults = config_mod.Config()
    for section in dataclasses.fields(defaults):
        keys = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert set(data.get(section.name, {})) == keys, section.name
    data["sensor"].pop("id")
    cfg = config_mod.from_dict(data)
    assert cfg == config_mod.replace_section(defaults, "capture", interfaces=("br0",))


# --- the recorder's privileges, measured ------------------------------------------------------

SANDBOX = r'''
import errno, os, sys, seccomp
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
for af in range(64):              # RestrictAddressFamilies=AF_PACKET AF_UNIX
    if af not in (1, 17):
        f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, af))
W, X = 2, 4                       # MemoryDenyWriteExecute=yes
f.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, W | X, W | X))
f.add_rule(seccomp.ERRNO(errno.EPERM), "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, X, X))
f.add_rule(seccomp.ERRNO(errno.EPERM), "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, X, X))
f.load()
os.execvp(sys.argv[1], sys.argv[1:])
'''


@pytest.mark.live
def test_recorder_needs_only_cap_net_raw_and_the_units_address_families(tmp_path, request):
    """The unit's claims, measured: as an unprivileged user holding only CAP_NET_RAW, with every
    address family but AF_PACKET and AF_UNIX refused and W+X memory refused (as systemd's seccomp
    filters do), the recorder opens br0 promiscuously and records traffic through the bridge.

    Needs root (namespaces, setpriv), iproute2 and python3-seccomp (Debian's python3).
    """
    if os.geteuid() != 0:
        pytest.fail("needs root: network namespaces and dropping to an unprivileged user")
    assert shutil.which("setpriv"), "setpriv (util-linux) not found"
    assert subprocess.run(["/usr/bin/python3", "-c", "import seccomp"]).returncode == 0, \
        "apt-get install python3-seccomp"
    from appliance.netlab import Lab
    sandbox = tmp_path / "sandbox.py"
    sandbox.write_text(SANDBOX)
    work = Path(tempfile.mkdtemp(prefix="flowtap-caps-"))    # pytest's tmp_path is root-only
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    work.chmod(0o755)
    data, run = work / "data", work / "run"
    data.mkdir()
    run.mkdir()
    nobody = 65534
    os.chown(data, nobody, nobody)
    os.chown(run, nobody, nobody)
    with Lab() as lab:
        cmd = ["ip", "netns", "exec", lab.tap, "/usr/bin/python3", str(sandbox),
               "setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
               "--inh-caps=-all,+net_raw", "--ambient-caps=-all,+net_raw", "--bounding-set=-all,+net_raw",
               "--", flowtap_binary(), "record", "-i", "br0", "-d", str(data), "--runtime-dir", str(run), "-q"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            status_file = run / "status.json"
            deadline = time.monotonic() + 30
            while not status_file.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status_file.exists(), proc.communicate(timeout=10)
            lab.run(lab.h1, "ping", "-c", "3", "-i", "0.2", lab.addr["h2"])
            time.sleep(1.5)
            status = json.loads(status_file.read_text())
            caps = Path(f"/proc/{status['pid']}/status").read_text()
        finally:
            if proc.poll() is None:
                pid = json.loads((run / "status.json").read_text())["pid"] if (run / "status.json").exists() else proc.pid
                os.kill(pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"CapEff:\s+0000000000002000", caps), caps        # CAP_NET_RAW only
    assert status["interfaces"][0]["promisc"] is True
    assert status["packets"] >= 6, status
    assert status["clock_synced"] is not None, "adjtimex (read-only) must stay allowed"
    archives = list(data.glob("**/*.sqlite"))
    assert archives, "no archive written"
