"""The appliance build, exercised: ``image/build.sh --arch amd64 --rootfs-only`` bootstraps a
Debian bookworm root file system (mmdebstrap, minbase) and installs flowtap into it exactly as the
Raspberry Pi image does (image/install.sh from wheels built here). Then, inside it (chroot), the
installed ``flowtap ra -r`` must meter a capture exactly as this checkout does, and the installed
units must verify.

The bootstrapped Debian tree is cached as a tarball in $FLOWTAP_IMAGE_CACHE (default
/var/cache/flowtap-image) keyed by its package list; flowtap itself is built and installed afresh
on every run. Uncached, the run takes a few minutes (downloads from deb.debian.org).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "image" / "build.sh"
UNITS = ("flowtap-recorder.service", "flowtap-web.service", "flowtap-alerts.service",
         "flowtap-recorder-reload.path",
         "flowtap-recorder-reload.service", "flowtap-tls-cert.service")
UNITDIR = "usr/local/lib/systemd/system"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> Path:
    """The amd64 root file system with flowtap installed (built once for this module)."""
    if os.geteuid() != 0:
        pytest.fail("building a root file system needs root (CI runs as root)")
    for tool in ("mmdebstrap", "unshare", "chroot"):
        assert shutil.which(tool), f"{tool} not found: apt-get install mmdebstrap util-linux coreutils"
    out = tmp_path_factory.mktemp("image") / "rootfs"
    env = dict(os.environ, FLOWTAP_IMAGE_CACHE=os.environ.get("FLOWTAP_IMAGE_CACHE",
                                                              "/var/cache/flowtap-image"))
    proc = subprocess.run([str(BUILD), "--arch", "amd64", "--rootfs-only", str(out)],
                          capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, f"build.sh failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    yield out
    shutil.rmtree(out, ignore_errors=True)


def in_root(root: Path, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command chrooted into root, with /proc and /dev, in a throwaway mount namespace."""
    script = ('mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && '
              'exec chroot "$0" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 TZ=UTC "$@"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           str(root), *cmd], capture_output=True, text=True, timeout=timeout)


def flowtap_here() -> str:
    exe = Path(sys.executable).parent / "flowtap"
    assert exe.exists(), "no flowtap next to the test interpreter: run `make build`"
    return str(exe)


def test_flowtap_is_installed_in_its_venv(rootfs):
    venv = rootfs / "opt/flowtap"
    assert (venv / "pyvenv.cfg").exists()
    assert (venv / "bin/flowtap").exists()
    natives = list(venv.glob("lib/python3*/site-packages/appliance/_native*.so"))
    assert natives, "the C extension is not installed"
    assert natives[0].read_bytes()[:4] == b"\x7fELF"
    proc = in_root(rootfs, "/opt/flowtap/bin/flowtap", "--help")
    assert proc.returncode == 0, proc.stderr


def test_installed_ra_meters_a_capture_like_this_checkout(rootfs, pcaps_dir):
    """`flowtap ra -r` inside the root file system prints exactly what this checkout prints."""
    captures = sorted(p for p in (pcaps_dir / "basic").iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert captures, f"no captures in {pcaps_dir / 'basic'}"
    capture = captures[0]
    shutil.copy(capture, rootfs / "tmp" / capture.name)
    args = ["ra", "-n", "-u", "-s", "stime", "proto", "saddr", "sport", "daddr", "dport",
            "spkts", "dpkts", "sbytes", "dbytes", "state"]
    inside = in_root(rootfs, "/opt/flowtap/bin/flowtap", *args[:1], "-r", f"/tmp/{capture.name}", *args[1:])
    assert inside.returncode == 0, inside.stderr
    here = subprocess.run([flowtap_here(), args[0], "-r", str(capture), *args[1:]],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TZ="UTC"))
    assert here.returncode == 0, here.stderr
    assert len(inside.stdout.splitlines()) > 1, inside.stdout
    assert inside.stdout == here.stdout


def test_installed_units_verify_inside_the_rootfs(rootfs):
    """The real files, in place: /opt/flowtap/bin/flowtap exists in this root."""
    proc = in_root(rootfs, "systemd-analyze", "verify", "--man=no",
                   *(f"/{UNITDIR}/{u}" for u in UNITS))
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
        proc.stdout + proc.stderr


def test_users_directories_and_config(rootfs):
    passwd = {line.split(":")[0]: line.split(":") for line in (rootfs / "etc/passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (rootfs / "etc/group").read_text().splitlines()}
    assert "flowtap" in passwd and "flowtap-web" in passwd
    assert "flowtap-web" in group["flowtap"][3].split(",")
    conf = rootfs / "etc/flowtap/flowtap.toml"
    assert conf.read_text() == (REPO / "systemd/etc/flowtap.toml").read_text()
    assert int(group["flowtap-web"][2]) == conf.stat().st_gid
    lib = rootfs / "var/lib/flowtap"
    assert lib.stat().st_uid == int(passwd["flowtap"][2]) and oct(lib.stat().st_mode & 0o777) == "0o750"
    web = lib / "web"
    assert web.stat().st_uid == int(passwd["flowtap-web"][2]) and oct(web.stat().st_mode & 0o777) == "0o700"


def test_services_are_enabled(rootfs):
    system = rootfs / "etc/systemd/system"
    for wants, unit in (("multi-user.target.wants", "flowtap-recorder.service"),
                        ("multi-user.target.wants", "flowtap-web.service"),
                        ("multi-user.target.wants", "flowtap-alerts.service"),
                        ("paths.target.wants", "flowtap-recorder-reload.path"),
                        ("nginx.service.wants", "flowtap-tls-cert.service")):
        link = system / wants / unit
        assert link.is_symlink(), f"{unit} not enabled"
        assert os.readlink(link) == f"/{UNITDIR}/{unit}"
    networkd = list(system.glob("*.wants/systemd-networkd.service"))
    assert networkd, "systemd-networkd not enabled (install.sh --network)"
    for name in ("10-br0.netdev", "20-br0-ports.network", "30-br0.network", "40-mgmt.network"):
        assert (rootfs / "usr/local/lib/systemd/network" / name).exists()
    assert (rootfs / "usr/local/lib/systemd/system.conf.d/flowtap-watchdog.conf").exists()
    assert (rootfs / "usr/local/lib/sysctl.d/90-flowtap.conf").exists()
    assert (system / "multi-user.target.wants/nginx.service").is_symlink(), "nginx not enabled"
    assert (rootfs / "etc/nginx/conf.d/flowtap.conf").read_text() == (REPO / "systemd/nginx-flowtap.conf").read_text()
    assert not (rootfs / "etc/nginx/sites-enabled/default").exists()


def test_root_is_locked_and_there_is_no_compiler(rootfs):
    shadow = {line.split(":")[0]: line.split(":") for line in (rootfs / "etc/shadow").read_text().splitlines()}
    assert shadow["root"][1].startswith(("!", "*")), "root must have no usable password"
    for user, fields in shadow.items():
        assert fields[1] in ("*", "!", "!*") or fields[1].startswith("!"), f"{user} has a password"
    for cc in ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc-12"):
        assert not (rootfs / "usr/bin" / cc).exists(), f"{cc} in the root file system"
    assert not list((rootfs / "usr/include").glob("pcap*")), "development headers in the root file system"


def test_install_again_upgrades_in_place_and_keeps_the_config(rootfs, tmp_path):
    """Re-running install.sh (as `make install` does on a Pi) keeps an edited config."""
    conf = rootfs / "etc/flowtap/flowtap.toml"
    original = conf.read_text()
    edited = original.replace("# snaplen = 128", "snaplen = 256")
    assert edited != original
    conf.write_text(edited)
    src = rootfs / "tmp/flowtap-src-again"
    shutil.copytree(REPO / "image", src / "image")
    shutil.copytree(REPO / "systemd", src / "systemd")
    (src / "wheels").mkdir()          # nothing new to install: pip keeps what is there
    try:
        proc = in_root(rootfs, "sh", "/tmp/flowtap-src-again/image/install.sh", "--wheelhouse",
                       "/tmp/flowtap-src-again/wheels", "--network", "--no-start")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "keeping the existing /etc/flowtap/flowtap.toml" in proc.stdout
        assert conf.read_text() == edited
    finally:
        conf.write_text(original)
        shutil.rmtree(src, ignore_errors=True)


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: apt-get install shellcheck"
    scripts = [REPO / "image/build.sh", REPO / "image/install.sh",
               REPO / "image/files/flowtap-firstboot", REPO / "hw/measure.sh",
               REPO / "systemd/flowtap-tls-cert"]
    proc = subprocess.run([shellcheck, "--severity=style", *map(str, scripts)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_first_boot_sets_sensor_id_setup_token_and_ssh(tmp_path):
    """image/files/flowtap-firstboot on a fake root (FLOWTAP_FIRSTBOOT_ROOT), /data a tmpfs:
    the sensor id from the board serial goes into the config, the setup token is made once
    (0600, owned like the web directory) and shown on the console, SSH keys are taken from the
    boot partition; a second boot changes nothing."""
    if os.geteuid() != 0:
        pytest.fail("needs root: a private mount namespace for /data")
    assert shutil.which("ssh-keygen"), "ssh-keygen not found: apt-get install openssh-client"
    r = tmp_path / "root"
    for d in ("data", "etc/flowtap", "var/lib/flowtap/web", "proc/device-tree", "boot/firmware"):
        (r / d).mkdir(parents=True)
    shutil.copy(REPO / "systemd/etc/flowtap.toml", r / "etc/flowtap/flowtap.toml")
    (r / "proc/device-tree/serial-number").write_bytes(b"10000000ABCDEF12\0")
    (r / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (r / "boot/firmware/authorized_keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE test@example\n")
    os.chown(r / "var/lib/flowtap/web", 4242, 4242)
    script = REPO / "image/files/flowtap-firstboot"
    run = (f'mount -t tmpfs tmpfs "$0/data" && touch "$0/data/.grown" && "$1" && "$1" && '
           f'cp -a "$0/data" "$0/data-after"')
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", run,
                           str(r), str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, FLOWTAP_FIRSTBOOT_ROOT=str(r)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conf = (r / "etc/flowtap/flowtap.toml").read_text()
    assert 'id = "flowtap-cdef12"' in conf.splitlines()
    assert conf.count("\nid = ") == 1, "the sensor id must be written once"
    from appliance import config as config_mod
    assert config_mod.load(r / "etc/flowtap/flowtap.toml").sensor.id == "flowtap-cdef12"
    assert (r / "etc/hostname").read_text().strip() == "flowtap-cdef12"
    token = r / "var/lib/flowtap/web/setup-token"
    st = token.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4242, 0o600)
    value = token.read_text().strip()
    assert len(value) == 24 and all(c.isalnum() or c in "-_" for c in value)
    assert proc.stdout.count("web setup token created") == 1, proc.stdout
    assert value in (r / "run/issue.d/50-flowtap.issue").read_text()
    ssh = r / "data-after/ssh"
    assert (ssh / "authorized_keys").read_text().startswith("ssh-ed25519 ")
    assert (ssh / "authorized_keys").stat().st_mode & 0o777 == 0o600
    assert (ssh / "ssh_host_ed25519_key").exists()
