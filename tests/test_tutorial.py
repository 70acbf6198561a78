"""The Argus tutorial's commands, prefixed with ``flowtap`` and pointed at a flowtap archive
(DESIGN.md, Command line), run as an analyst runs them: the installed CLI in a shell, with a pipe.

Without Argus: each command over the archive prints what it prints over the capture. With Argus
(marker ``argus``): the same commands run by Debian's ra/racluster/rasort over ``argus -A``'s
output for the same capture print the same sessions, except the differences tests/argus_diff.py
classes as Argus's quirks (see bench/ARGUS_DIFF.md).
"""
from __future__ import annotations

import collections
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

try:                                   # tests/ as a package (repo root on sys.path) ...
    from tests import argus_diff
except ImportError:                    # ... or as a plain directory (pytest's rootdir insertion)
    import argus_diff

REPO = Path(__file__).resolve().parent.parent
FLOWTAP = REPO / ".venv" / "bin" / "flowtap"
CAPTURES = ["large/pcpp-example.pcap", "large/pcpp-many-protocols.pcap"]
RA_FIELDS = "stime proto saddr sport daddr dport spkts sappbytes dpkts dappbytes state"
# The tutorial, with ARCHIVE and HOST to fill in; the last one is a pipe.
TUTORIAL = [
    f"ra -u -Z b -L0 -n -r ARCHIVE -s {RA_FIELDS} - tcp",
    "racluster -L0 -M norep -u -n -r ARCHIVE - host HOST and tcp",
    "racluster -L0 -M norep -m saddr daddr -u -n -r ARCHIVE - tcp",
    "racluster -M norep -m saddr daddr -u -n -r ARCHIVE -w - - tcp | {tool}rasort -m bytes -L0",
]
COLUMNS = " ".join(argus_diff.COLUMNS)


def sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                          text=True, timeout=300)


def flowtap_cmd(template: str, archive: Path | str, host: str) -> str:
    text = template.replace("ARCHIVE", shlex.quote(str(archive))).replace("HOST", host)
    return f"{FLOWTAP} " + text.replace("{tool}", f"{FLOWTAP} ")


@pytest.fixture(scope="module")
def recorded(pcaps_dir, tmp_path_factory):
    """Capture name -> (capture, archive path, a busy TCP host), recorded by ``flowtap record``."""
    out = {}
    for name in CAPTURES:
        data = tmp_path_factory.mktemp("data")
        done = sh(f"{FLOWTAP} record -q -r {pcaps_dir / name} -d {data}")
        assert done.returncode == 0, done.stderr
        files = sorted((data / "archive").glob("flows-*.sqlite"))
        assert files
        # One file is named as the file itself, several by their directory.
        archive = files[0] if len(files) == 1 else data / "archive"
        tcp = sh(f"{FLOWTAP} ra -n -L -1 -s saddr -r {archive} - tcp").stdout.split()
        host = collections.Counter(tcp).most_common(1)[0][0]
        out[name] = (pcaps_dir / name, archive, host)
    return out


@pytest.mark.parametrize("name", CAPTURES)
@pytest.mark.parametrize("step", range(len(TUTORIAL)))
def test_tutorial_over_the_archive_prints_what_it_prints_over_the_capture(recorded, name, step):
    capture, archive, host = recorded[name]
    template = TUTORIAL[step]
    got = sh(flowtap_cmd(template, archive, host))
    want = sh(flowtap_cmd(template, capture, host))
    assert got.returncode == 0 and want.returncode == 0, got.stderr + want.stderr
    assert got.stderr == ""
    lines, want_lines = got.stdout.splitlines(), want.stdout.splitlines()
    assert len(lines) > 2 and lines[0] == want_lines[0]
    if "-m saddr daddr" in template:        # sorted by key (then by bytes): the same order
        assert lines == want_lines
    else:                                   # archive files come in time order
        assert sorted(lines) == sorted(want_lines)


# --- against Argus ------------------------------------------------------------------------------

def argus_cmd(template: str, arg: Path, host: str) -> str:
    """The tutorial command for Debian's clients: -X (ignore /etc/ra.conf) on each of them."""
    text = template.replace("ARCHIVE", shlex.quote(str(arg))).replace("HOST", host)
    first, _, rest = text.partition(" ")
    return f"{first} -X {rest}".replace("{tool}rasort", "rasort -X")


def with_columns(command: str, extra: str = "") -> str:
    """The command printing ``-c ,`` with argus_diff's columns (its parser needs them; Argus
    also prints ``dir flgs`` for its difference rules), the filter kept last."""
    columns = f"-c , -s {COLUMNS} {extra}".rstrip()
    if "| " in command:                     # the pipe: rasort prints them, as numbers
        return f"{command} -u -n {columns}"
    head, sep, filt = command.rpartition(" - ")
    return f"{head.replace(f'-s {RA_FIELDS}', '')} {columns}{sep}{filt}"


def parse(text: str, capture: str, side: str) -> list:
    sessions, bad = argus_diff.parse_csv(text, capture, side)
    assert not bad, bad[:3]
    return sessions


@pytest.fixture(scope="module")
def argus_files(recorded, tmp_path_factory):
    """Capture name -> Argus's .arg for it (status interval 60 s, flowtap's default)."""
    missing = [t for t in ("argus", "ra", "racluster", "rasort") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt install argus-server argus-client")
    out = {}
    for name, (capture, _, _) in recorded.items():
        arg = tmp_path_factory.mktemp("argus") / "x.arg"
        arg.unlink(missing_ok=True)                         # argus -w appends
        done = sh(f"argus -S 60 -A -r {capture} -w {arg}")
        assert arg.exists(), done.stderr
        out[name] = arg
    return out


def quirks(diffs) -> list:
    verdicts = {rule.name: rule.verdict for rule in argus_diff.RULES}
    return [d for d in diffs if verdicts.get(d.cls) != argus_diff.ARGUS]


def session_diffs(name, capture, flowtap_text, argus_text):
    """argus_diff's comparison of two session lists: (pairs, differences)."""
    res = argus_diff.compare_capture(
        name, argus_diff.SideResult(parse(argus_text, name, "argus"), []),
        argus_diff.SideResult(parse(flowtap_text, name, "flowtap"), []),
        argus_diff.scan_capture(capture))
    return res.pairs, res.diffs


def sent(sessions) -> dict:
    """Per unordered address pair: what each address sent (packets, bytes, app bytes), so that
    the orientation a tool gave a session does not matter."""
    out: dict = collections.defaultdict(lambda: collections.Counter())
    for s in sessions:
        a, b = s.addrs
        for addr, i in ((a, 0), (b, 1)):
            out[frozenset((a, b))][addr] += 0          # present even when silent
            out[frozenset((a, b))][(addr, "pkts")] += s.pkts[i]
            out[frozenset((a, b))][(addr, "bytes")] += s.bytes[i]
            out[frozenset((a, b))][(addr, "app")] += s.app[i]
    return out


@pytest.mark.argus
@pytest.mark.parametrize("name", CAPTURES)
def test_tutorial_matches_argus(recorded, argus_files, name):
    capture, archive, host = recorded[name]
    arg = argus_files[name]
    outputs = {}
    for step, template in enumerate(TUTORIAL):
        ours, theirs = sh(flowtap_cmd(template, archive, host)), sh(argus_cmd(template, arg, host))
        assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
        # The literal tutorial command: the same label line as Argus's.
        assert ours.stdout.splitlines()[0] == theirs.stdout.splitlines()[0], template
        ours = sh(with_columns(flowtap_cmd(template, archive, host)))
        theirs = sh(with_columns(argus_cmd(template, arg, host), "dir flgs"))
        assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
        outputs[step] = ours.stdout, theirs.stdout

    # Sessions (ra; racluster of one host): every difference is one of Argus's quirks.
    for step in (0, 1):
        pairs, diffs = session_diffs(name, capture, *outputs[step])
        assert len(pairs) > 5, step
        assert not quirks(diffs), [(d.cls, d.argus and d.argus.line, d.flowtap and d.flowtap.line)
                                   for d in quirks(diffs)]
    # All TCP sessions merged per flow: the address pairs behind Argus's quirks.
    ours = sh(f"{FLOWTAP} racluster -nn -u -c , -L0 -s {COLUMNS} -r {archive} - tcp").stdout
    theirs = sh(f"racluster -X -nn -u -c , -L0 -s {COLUMNS} dir flgs -r {arg} - tcp").stdout
    pairs, diffs = session_diffs(name, capture, ours, theirs)
    assert not quirks(diffs)
    known = {frozenset((d.argus or d.flowtap).addrs) for d in diffs}

    # racluster -m saddr daddr, and its pipe into rasort -m bytes: per address pair, what each
    # side sent is the same, but for pairs with one of Argus's quirks.
    for step in (2, 3):
        ours_s = parse(outputs[step][0], name, "flowtap")
        theirs_s = parse(outputs[step][1], name, "argus")
        a, b = sent(ours_s), sent(theirs_s)
        wrong = [pair for pair in set(a) | set(b) if a.get(pair) != b.get(pair) and pair not in known]
        assert not wrong, step
        assert len(a) > 3
        if step == 3:
            for sessions in (ours_s, theirs_s):
                sizes = [sum(s.bytes) for s in sessions]
                assert sizes == sorted(sizes, reverse=True)
