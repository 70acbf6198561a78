"""``flowtap alerts``: import IDS alerts beside the archives, list them with their sessions.

``flowtap alerts import`` reads alert files (``alert_formats``) into the store (``alerts``);
``flowtap alerts -r DIR ...`` lists them in time order with ra's options and filter language;
``flowtap alerts follow`` (``alert_follow``) imports growing files live.
"""
from __future__ import annotations

import contextlib
import csv
import gc
import heapq
import itertools
import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from . import fields as _fields
from .alert_types import AlertError

CONTEXT = {"help_option_names": ["-h", "--help"]}
# -s names for alerts: key -> (label, width); the default list first.
ALERT_FIELDS = {
    "time": ("Time", 26), "id": ("Id", 16), "priority": ("Pri", 3), "rule": ("Rule", 18),
    "proto": ("Proto", 5), "saddr": ("SrcAddr", 18), "sport": ("Sport", 5),
    "daddr": ("DstAddr", 18), "dport": ("Dport", 5), "sessions": ("Sessions", 8),
    "msg": ("Message", 0), "gid": ("Gid", 3), "sid": ("Sid", 10), "rev": ("Rev", 3),
    "classification": ("Class", 0), "community_id": ("CommunityId", 30), "flow_id": ("FlowId", 16),
    "app_proto": ("AppProto", 8), "action": ("Action", 7), "format": ("Format", 11),
}
DEFAULT_FIELDS = ("time", "id", "priority", "rule", "proto", "saddr", "sport", "daddr", "dport",
                  "sessions", "msg")


class AlertsGroup(click.Group):
    """``flowtap alerts [OPTIONS] [- FILTER]`` lists; ``flowtap alerts import|follow`` are commands."""

    LAZY = ("follow",)          # its module loads only when it runs (ra's start-up stays short)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.list_commands(ctx) and args[0] not in ("-h", "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "follow":
            from .alert_follow import follow_command
            return follow_command
        return super().get_command(ctx, name)


@click.group(cls=AlertsGroup, context_settings=CONTEXT, epilog="""\b
Example:
  flowtap alerts import -d /var/lib/flowtap/archive /var/log/suricata/eve.json
  flowtap alerts -r /var/lib/flowtap/archive -t -1h -M json - sid 2019401
  flowtap ra -n -r /var/lib/flowtap/archive --around 3f2a9c0d41e8b7a6""")
def alerts() -> None:
    """IDS alerts (Suricata EVE, Snort 3 alert_json/alert_csv, alert_fast, unified2) kept beside
    the archives and linked to their sessions. Without a command: list them (see `alerts list -h`)."""


@alerts.command("import", context_settings=CONTEXT, epilog="""\b
Example:
  flowtap alerts import -d /var/lib/flowtap/archive /var/log/suricata/eve.json
  flowtap alerts import -d /var/lib/flowtap/archive --year 2024 --sid-map sid-msg.map alert_fast.txt
  zcat fast.log.gz | flowtap alerts import -d /var/lib/flowtap/archive --format fast -""")
@click.option("-d", "directory", required=True, metavar="ARCHIVE_DIR",
              help="The archive directory (or data directory) the alerts go beside.")
@click.option("--format", "fmt", type=click.Choice(["auto", "eve", "snort3-json", "snort3-csv",
                                                    "fast", "unified2"]), default="auto",
              help="The alert format (default: detected from the content).")
@click.option("--year", type=click.IntRange(1970, 9999), metavar="Y",
              help="Year of year-less times (alert_fast); default: the one inside the archives' span.")
@click.option("--sid-map", "sid_map_path", metavar="FILE",
              help="sid-msg.map (v1 or v2) or a rules file: names rules of formats without a message.")
@click.argument("files", nargs=-1, required=True, metavar="FILE... | -")
def import_command(directory: str, fmt: str, year: int | None, sid_map_path: str | None,
                   files: tuple[str, ...]) -> None:
    """Import alert files into the alert store beside the archives.

    Prints one summary line (alerts read, imported, duplicates, linked now, unlinked, bad lines);
    the first bad line is shown with its line number. Exit 2 when a file holds no readable alert.
    """
    from . import alert_formats, alerts as _alerts

    store = _alerts.store_dir(directory)
    span = _alerts.recorded_span(store)
    sid_map = None
    if sid_map_path:
        try:
            sid_map = alert_formats.load_sid_map(sid_map_path)
        except (OSError, AlertError) as e:
            _fail(f"--sid-map {sid_map_path}: {e}", 2)
    total = _alerts.ImportResult()
    stats_all = []
    failed = []
    with _collector_paused():
        for name in files:
            stats = alert_formats.ReadStats()
            try:
                stream = sys.stdin.buffer if name == "-" else open(name, "rb")
            except OSError as e:
                failed.append(f"{name}: {e.strerror or e}")
                continue
            try:
                got = alert_formats.read_rows(stream, None if fmt == "auto" else fmt, year=year,
                                              span=span, sid_map=sid_map, stats=stats)
                result = _alerts.import_rows(store, got)
            except AlertError as e:
                failed.append(f"{name}: {e}")
                continue
            except _alerts.AlertStoreError as e:
                _fail(f"{name}: {e}", 1)
            finally:
                if name != "-":
                    stream.close()
            stats_all.append((name, stats))
            for k in ("read", "imported", "duplicates", "linked", "unlinked"):
                setattr(total, k, getattr(total, k) + getattr(result, k))
            if stats.read == 0:
                first = f" (line {stats.first_bad[0]}: {stats.first_bad[1]})" if stats.first_bad else ""
                failed.append(f"{name}: no readable alert{first}")
    bad = sum(s.bad for _, s in stats_all)
    skipped = sum(s.skipped for _, s in stats_all)
    years = {y: how for _, s in stats_all for y, how in s.years.items()}
    line = (f"alerts read {total.read} imported {total.imported} duplicates {total.duplicates}"
            f" linked {total.linked} unlinked {total.unlinked} bad {bad} skipped {skipped}")
    if years:
        line += " year " + ", ".join(f"{y} ({how})" for y, how in sorted(years.items()))
    click.echo(line)
    for name, s in stats_all:
        if s.first_bad:
            click.echo(f"flowtap: {name}: line {s.first_bad[0]}: {s.first_bad[1]}", err=True)
    for msg in failed:
        click.echo(f"flowtap: {msg}", err=True)
    if failed:
        raise click.exceptions.Exit(2)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off: the rows of an import hold no cycles, and it would only walk
    each batch held in memory again and again (a tenth of an import's time)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class _ArgusStyle(click.Command):
    """``- FILTER`` and ``-s a b`` as ra takes them (``cli.argus_argv``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from .cli import argus_argv
        return super().parse_args(ctx, argus_argv(args))


@alerts.command("list", cls=_ArgusStyle, context_settings=CONTEXT, epilog="""\b
Example:
  flowtap alerts -r /var/lib/flowtap/archive -t -1h
  flowtap alerts -r /var/lib/flowtap/archive -n -c , -s time rule saddr daddr msg - sid 2019401
  flowtap alerts -r /var/lib/flowtap/archive -M json - host 10.0.0.5 and not dst port 53""")
@click.option("-r", "paths", multiple=True, required=True, metavar="ARCHIVE_DIR",
              help="Archive directories (or data directories) whose alerts to list. Repeatable.")
@click.option("-t", "time_range", metavar="RANGE", help="Time range, as ra's -t.")
@click.option("-n", "numeric", count=True, help="Numeric protocols (ports are always numbers).")
@click.option("-c", "delimiter", metavar="CHAR", help="Delimited output with a label line.")
@click.option("-s", "field_items", multiple=True, metavar="FIELD",
              help=f"Fields: {' '.join(ALERT_FIELDS)}.")
@click.option("-M", "modes", multiple=True, metavar="MODE", help="json: one JSON object per alert, "
              "with its linked sessions.")
@click.argument("filter_words", nargs=-1, metavar="[- FILTER...]")
def list_command(paths: tuple[str, ...], time_range: str | None, numeric: int,
                 delimiter: str | None, field_items: tuple[str, ...], modes: tuple[str, ...],
                 filter_words: tuple[str, ...]) -> None:
    """List alerts in time order. The filter is ra's language, said of the alert's own protocol,
    addresses and ports, plus `sid N` and `gid N`."""
    from . import alerts as _alerts
    from .cli import Selection

    bad_modes = [m for m in modes if m != "json"]
    if bad_modes:
        raise click.UsageError(f"-M {bad_modes[0]}: alerts know only -M json")
    fields = [f for item in field_items for f in item.split(",") if f] or list(DEFAULT_FIELDS)
    for f in fields:
        if f not in ALERT_FIELDS:
            raise click.UsageError(f"-s {f}: not an alert field ({' '.join(ALERT_FIELDS)})")
    ast = Selection.build(filter_words, time_range).ast      # as ra parses them, errors alike
    stores = [_alerts.store_dir(p) for p in paths]
    for p, s in zip(paths, stores):
        if not s.is_dir():
            _fail(f"{p}: No such directory", 1)
    merged = heapq.merge(*(_tagged(s, ast) for s in stores), key=lambda x: (x[1]["time"], x[1]["id"]))
    as_json = "json" in modes
    delimited = None
    if delimiter is not None:
        delimiter = delimiter.replace("\\t", "\t")
        if len(delimiter) != 1:
            raise click.UsageError("-c takes one character")
        # Quoted as CSV where a value holds the delimiter (messages are free text).
        delimited = csv.writer(_Echo(), delimiter=delimiter, lineterminator="\n")
        delimited.writerow([ALERT_FIELDS[f][0] for f in fields])
    elif not as_json:
        click.echo(" ".join(_cell(ALERT_FIELDS[f][0], f) for f in fields).rstrip())
    want = as_json or "sessions" in fields
    try:
        for store, a, sessions in _with_sessions(merged, want):
            if as_json:
                click.echo(json.dumps(_json(a, sessions), separators=(",", ":")))
            else:
                values = [_value(a, f, numeric, len(sessions)) for f in fields]
                if delimited is not None:
                    delimited.writerow(values)
                else:
                    click.echo(" ".join(_cell(v, f) for v, f in zip(values, fields)).rstrip())
    except _alerts.AlertStoreError as e:
        _fail(str(e), 1)


CHUNK = 2000          # alerts whose sessions are looked up together (sessions_for)


def _with_sessions(merged, want: bool):
    """(store, alert, its linked records) in the merged order, looked up a chunk at a time."""
    from . import alerts as _alerts

    for chunk in iter(lambda: list(itertools.islice(merged, CHUNK)), []):
        found: dict = {}
        if want:
            for store in {s for s, _ in chunk}:
                found.update(_alerts.sessions_for(store, [a for s, a in chunk if s == store]))
        for store, a in chunk:
            yield store, a, found.get(a["id"], [])


class _Echo:
    """A file-like ``write`` onto click's stdout (what csv.writer needs)."""

    def write(self, text: str) -> None:
        click.echo(text, nl=False)


def _tagged(store: Path, ast: Any):
    from . import alerts as _alerts

    for a in _alerts.iter_alerts(store, ast):
        yield store, a


def _json(a: dict[str, Any], sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """The alert's stored fields (but when it was imported) and its sessions."""
    from .alerts import ALERT_NAMES

    out = {k: a[k] for k in ALERT_NAMES if k != "imported_at"}
    out["sessions"] = sessions
    return out


def _value(a: dict[str, Any], f: str, numeric: int, n_sessions: int) -> str:
    if f == "time":
        return datetime.fromtimestamp(a["time"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    if f == "rule":
        return f"{a['gid']}:{a['sid']}:{a['rev']}"
    if f == "sessions":
        return str(n_sessions)
    if f == "proto":
        return str(a["proto"]) if numeric or a["proto"] is None else _fields.proto_name(a["proto"])
    v = a[f]
    if v is None:
        return ""
    return printable(str(v))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Control characters as \\xNN: an alert's message comes from packets an outsider sent, and
    must not move the analyst's terminal cursor or change its title."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _cell(v: str, f: str) -> str:
    width = ALERT_FIELDS[f][1]
    if not width:
        return v
    return v.rjust(width) if f in ("sport", "dport", "priority", "sessions", "gid", "sid", "rev") else v.ljust(width)


def _fail(message: str, code: int) -> None:
    click.echo(f"flowtap: {message}", err=True)
    raise click.exceptions.Exit(code)
