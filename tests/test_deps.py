"""`make run`/`make test` set up a fresh machine themselves: ``deps/install.sh`` (which both run
first) inside a bare Debian bookworm (mmdebstrap, minbase) that has none of flowtap's packages.
As a user it must stop with the one ``sudo apt-get install`` line; as root it installs everything
the step needs, and a second run has nothing left to do.

The bare tree is cached as a tarball in $FLOWTAP_IMAGE_CACHE (as tests/test_image.py's trees);
installing downloads from deb.debian.org.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_image import in_root

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLOWTAP_IMAGE_CACHE", "/var/cache/flowtap-image"))

pytestmark = pytest.mark.slow


def wanted(*steps: str) -> list[str]:
    lines = (REPO / "deps" / "packages.txt").read_text().splitlines()
    return [line.split()[1] for line in lines if line.split()[:1] and line.split()[0] in steps]


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """A minbase bookworm tree with deps/ copied in (the tarball cached between runs)."""
    if os.geteuid() != 0:
        pytest.fail("a root file system needs root (CI runs as root)")
    assert shutil.which("mmdebstrap"), "mmdebstrap not found: apt-get install mmdebstrap"
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "deps-minbase-bookworm.tar"
    if not tarball.exists():
        part = tarball.with_suffix(".part")
        proc = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar",
                               "--aptopt=Acquire::Retries \"3\"", "bookworm", str(part),
                               "deb http://deb.debian.org/debian bookworm main",
                               "deb http://deb.debian.org/debian bookworm-updates main"],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        part.rename(tarball)
    root = tmp_path_factory.mktemp("bare") / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xpf", str(tarball), "--numeric-owner"], check=True)
    shutil.copytree(REPO / "deps", root / "src" / "deps")
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def installed(root: Path, packages: list[str]) -> set[str]:
    proc = in_root(root, "dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" installed")}


def test_a_user_is_told_the_one_line_to_run(bare):
    assert not installed(bare, ["libpcap-dev", "python3-venv"])
    proc = in_root(bare, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   "/src/deps/install.sh", "build")
    assert proc.returncode == 1
    line = [x for x in proc.stderr.splitlines() if "apt-get install" in x]
    assert len(line) == 1, proc.stderr
    assert line[0].strip().startswith("sudo apt-get install -y --no-install-recommends")
    assert {"libpcap-dev", "libsystemd-dev", "python3-venv", "build-essential"} <= set(line[0].split())


@pytest.mark.parametrize("step", ["build", "test"])
def test_root_installs_every_package_of_the_step(bare, step):
    packages = wanted("build", step)
    proc = in_root(bare, "/src/deps/install.sh", step, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert installed(bare, packages) == set(packages)
    again = in_root(bare, "/src/deps/install.sh", step)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""


def test_bad_step_is_refused():
    proc = subprocess.run([str(REPO / "deps" / "install.sh"), "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown step 'bogus'" in proc.stderr
