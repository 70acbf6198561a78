"""Shared fixtures: the shared test captures, a CLI runner, session records built by hand, and the
web tests' data directories (a module's ``recorded`` fixture says what is recorded in them)."""

from __future__ import annotations

import pathlib
import signal
import sqlite3
import time

import pytest
from click.testing import CliRunner

# A suite started as a background job (`cmd &` in a script) inherits SIGINT ignored, and so would
# every flowtap it starts: the tests that end `flowtap ra -S` with Ctrl-C need it at its default.
# A handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = pathlib.Path(__file__).resolve().parent.parent

# One complete TCP session record (Argus names); tests override what they exercise.
BASE_RECORD = {
    "srcid": "sensor1", "seq": 1, "cause": "Stop", "stime": 1700000000.0, "ltime": 1700000001.5,
    "dur": 1.5, "proto": 6, "saddr": "10.0.0.1", "sport": 40000, "daddr": "198.18.0.1",
    "dport": 80, "dir": "->", "state": "FIN", "spkts": 5, "dpkts": 4, "sbytes": 600,
    "dbytes": 3000, "sappbytes": 300, "dappbytes": 2700, "pkts": 9, "bytes": 3600,
    "appbytes": 3000, "stos": 0, "dtos": 0, "sttl": 64, "dttl": 56,
    "smac": "02:00:00:00:00:01", "dmac": "02:00:00:00:00:02", "svlan": None, "dvlan": None,
    "smpls": None, "dmpls": None, "sflags": "FSPA", "dflags": "FSPA", "synack": 0.01,
    "ackdat": 0.001, "tcprtt": 0.011, "sretrans": 0, "dretrans": 0, "sgap": 0, "dgap": 0,
    "smaxsz": 400, "sminsz": 54, "dmaxsz": 1514, "dminsz": 54, "flgs": " e       ",
    "conn_state": "SF", "history": "ShADadFf", "community_id": "1:abc=",
}


def build_record(**kw):
    """A record: BASE_RECORD with overrides; totals and dur follow the overrides unless given."""
    r = dict(BASE_RECORD)
    r.update(kw)
    for total, s, d in (("pkts", "spkts", "dpkts"), ("bytes", "sbytes", "dbytes"),
                        ("appbytes", "sappbytes", "dappbytes")):
        if total not in kw:
            r[total] = r[s] + r[d]
    if "dur" not in kw:
        r["dur"] = round(r["ltime"] - r["stime"], 6)
    return r


@pytest.fixture
def make_record():
    """Factory for hand-built records (plain data, see ``build_record``)."""
    return build_record


@pytest.fixture(scope="session")
def pcaps_dir() -> pathlib.Path:
    """The shared captures, ``../shared/pcaps`` from the repository root. Missing is a failure."""
    path = (REPO / ".." / "shared" / "pcaps").resolve()
    assert path.is_dir(), f"test captures not found at {path}"
    return path


def record_captures(pcaps_dir: pathlib.Path, tmp_path_factory, captures: list[str]) -> pathlib.Path:
    """A data directory whose archive/ holds real captures recorded by the Recorder (closed)."""
    from appliance import config, recorder

    data = tmp_path_factory.mktemp("recorded")
    cfg = config.replace_section(config.override(config.Config(), data_dir=str(data)), "archive",
                                 min_free_percent=0.0)
    assert recorder.Recorder(cfg).record_files([str(pcaps_dir / c) for c in captures]) == []
    return data


@pytest.fixture
def data_dir(recorded, tmp_path) -> pathlib.Path:
    """A fresh copy of the module's ``recorded`` data directory (closed archives stay read-only)."""
    import shutil

    out = tmp_path / "data"
    shutil.copytree(recorded, out)
    return out


@pytest.fixture
def archive_dir(data_dir) -> pathlib.Path:
    return data_dir / "archive"


@pytest.fixture
def runtime_dir(tmp_path) -> pathlib.Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def runner() -> CliRunner:
    """A click CliRunner (stdout and stderr kept apart)."""
    return CliRunner()


@pytest.fixture
def utc(monkeypatch):
    """Run the test with the local time zone set to UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def damage_page(path: pathlib.Path, name: str = "flows", which: int | None = None,
                keep_header: bool = False) -> int:
    """Turn one leaf page of table or index ``name`` of SQLite file ``path`` (the middle one
    by default) into garbage, as a failing flash card does: all of it, or with ``keep_header``
    only its cells (the page still parses; its records decode to nonsense). Keeps the file's
    mode; returns the page number."""
    with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        leaves = [r[0] for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno", (name,))]
    page = leaves[len(leaves) // 2 if which is None else which]
    start = (page - 1) * size + (200 if keep_header else 0)
    data = bytearray(path.read_bytes())
    data[start:page * size] = b"\xff" * (page * size - start)
    mode = path.stat().st_mode
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    path.chmod(mode)
    return page
