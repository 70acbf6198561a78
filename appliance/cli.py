"""The ``flowtap`` command: a click group whose ``ra``, ``racluster`` and ``rasort`` take Argus's argv.

Argus habits are kept: ``-s f1 f2 f3`` (several values after one flag, also ``-m`` and ``-r``),
``-nn``, ``-L0``, and a filter after a lone ``-`` (or ``--``). ``argus_argv`` rewrites such a
command line into one click parses. Inputs (``-r``) are capture files (metered on the fly with the
default configuration), flowtap record streams (``-w -`` writes one; ``-`` is stdin, which may
also carry a capture: ``pipe_input.py``) and SQLite archives, files or directories, read through
``query.py`` (filter and ``-t`` in SQL; ``racluster -m`` over archives only is a GROUP BY). ``-S URL`` instead attaches to a sensor's live record stream
(``stream_client.py``): the records its archive gets from now on, the filter applied on the sensor.

Exit status: 0 success (also when nothing matched, unlike ra's 1; also a live stream ended with
Ctrl-C), 1 an input failed (a truncated capture prints every record read, then ``flowtap: FILE:
reason``; a sensor that refuses the token or goes away likewise), 2 a usage error or a bad filter
(one line naming the column, also when the sensor found it bad).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import os
from pathlib import Path
import sys
from typing import Any, Callable, Iterable, Iterator

import click

from . import fields as _fields
from . import output as _output
from . import pipe_input
from . import fastpath as _fastpath

VALUE_OPTS = ("-r", "-s", "-m", "-M", "-c", "-L", "-N", "-t", "-Z", "-w", "-S")
MULTI_OPTS = ("-r", "-s", "-m", "-M")
MODES = {"ra": ("json",), "racluster": ("json", "norep", "correct", "nocorrect"),
         "rasort": ("json",)}
SQLITE_MAGIC = b"SQLite format 3\x00"


class SourceError(Exception):
    """An input that cannot be read as records."""


# Handles a whole capture file without yielding records: (path, stats_out); may raise CaptureError.
Direct = Callable[[str, dict], None]
# Merges every input in one go (racluster in SQL): (paths, selection, errors) -> records or None.
# (paths, selection, errors, record keys the output reads or None for all) -> records or None
Merged = Callable[[tuple[str, ...], "Selection", list[str], "frozenset[str] | None"],
                  "Iterable[dict] | None"]
# Prints the whole text output in C (racluster): (paths, selection, out, fields, opts) -> done.
Text = Callable[[tuple[str, ...], "Selection", Any, "list[_fields.Field]", "_fields.FormatOptions"],
                bool]


def _continues(opt: str, tok: str) -> bool:
    """True if ``tok`` is one more value of the multi-value option ``opt``."""
    if tok in ("-", "--"):
        return False
    if not tok.startswith("-"):
        return True
    if opt in ("-s", "-m") and len(tok) > 2:
        return tok[1:].partition(":")[0].partition("/")[0] in _fields.FIELDS
    return False


def argus_argv(args: Iterable[str]) -> list[str]:
    """Rewrite an Argus-style command line for click.

    ``-s a b -c ,`` becomes ``-s a -s b -c ,``; everything after a lone ``-`` or ``--`` becomes
    the filter (moved behind ``--``). A value-taking option always takes the next word, so
    ``-r -`` and ``-w -`` stay stdin/stdout and ``-L -1`` works.
    """
    args = list(args)
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok in ("-", "--"):
            return out + ["--"] + args[i + 1:]
        opt = tok[:2]
        if opt in VALUE_OPTS and not tok.startswith("--"):
            if len(tok) > 2:
                out.append(tok)
            elif i + 1 < len(args):
                out += [tok, args[i + 1]]
                i += 1
            else:
                out.append(tok)
            if opt in MULTI_OPTS:
                while i + 1 < len(args) and _continues(opt, args[i + 1]):
                    out += [opt, args[i + 1]]
                    i += 1
        else:
            out.append(tok)
        i += 1
    return out


class ArgusCommand(click.Command):
    """A click command that first rewrites Argus-style argv (see ``argus_argv``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, argus_argv(args))


# --- reading ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Selection:
    """What to read: the filter AST (filter and -t combined) and its compiled predicate."""

    ast: Any = None
    keep: Callable[[dict], bool] = lambda r: True

    @classmethod
    def build(cls, filter_words: tuple[str, ...], time_range: str | None) -> Selection:
        """Parse the filter and -t range once.

        :raises click.exceptions.Exit: code 2 after printing a one-line error.
        """
        if not filter_words and not time_range:
            return cls()                # select everything; the filter module is not loaded
        from . import filter as _filter

        try:
            ast = _filter.parse(" ".join(filter_words))
        except _filter.FilterError as e:
            _fail(str(e), 2)
        if time_range:
            try:
                span = _filter.parse_time_range(time_range)
            except _filter.FilterError as e:
                _fail(f"-t {time_range!r}: {e.message} (column {e.position})", 2)
            ast = span if ast is None else _filter.And(span, ast)
        return cls(ast, _filter.compile_predicate(ast))


def _around(spec: str, paths: tuple[str, ...], selection: Selection) -> Selection:
    """``--around ALERT_ID[:SECONDS]``: the selection narrowed to both hosts of that alert, within
    SECONDS of it; the alert is looked up in the alert stores beside the -r archives."""
    from . import alerts, filter as _filter

    alert_id, _, secs = spec.partition(":")
    try:
        seconds = float(secs) if secs else 900.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 366 * 86400:
        _fail(f"--around {spec!r}: SECONDS must be a number from 0 to a year", 2)
    found = None
    for p in paths:
        d = Path(p) if os.path.isdir(p) else Path(p).parent
        found = alerts.find(d, alert_id.lower())
        if found is not None:
            break
    if found is None:
        _fail(f"--around: no alert {alert_id!r} beside {' '.join(paths) or '(no -r archive)'}", 2)
    ast = alerts.around_ast(found, seconds)
    ast = ast if selection.ast is None else _filter.And(ast, selection.ast)
    return Selection(ast, _filter.compile_predicate(ast))


def _fail(message: str, code: int) -> None:
    click.echo(f"flowtap: {message}", err=True)
    raise click.exceptions.Exit(code)


def open_archive(path: str, selection: Selection, need: frozenset[str] | None = None) -> Iterator[dict]:
    """Records of a flowtap SQLite archive, or of a directory of them, that pass ``selection``
    (with ``need``, holding only those keys).

    The filter and ``-t`` range run as parameterised SQL (``query.read_records``), so the
    records need no filtering in Python.

    :raises SourceError: the archive cannot be read (after the records of readable files).
    """
    from . import query

    try:
        yield from query.read_records(path, selection.ast, need=need)
    except query.QueryError as e:
        raise SourceError(str(e)) from None


def is_archive(path: str) -> bool:
    """True for a directory (of archives) or a file that starts as an SQLite database."""
    if os.path.isdir(path):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _capture_records(path: str, stats: dict[str, Any], direct: Direct | None = None) -> Iterator[dict]:
    from .capture import CaptureError, meter_file   # the native module loads only when needed

    got: dict[str, Any] = {}
    try:
        if direct is None:
            yield from meter_file(path, stats_out=got)
        else:
            direct(path, got)                       # prints or counts the records itself
    except CaptureError as e:
        raise SourceError(str(e)) from None
    finally:
        _add_stats(stats, got)


def _add_stats(total: dict[str, Any], got: dict[str, Any]) -> None:
    for k in ("packets", "evicted"):
        total[k] = total.get(k, 0) + got.get(k, 0)
    total["errors"] = total.get("errors", 0) + sum(got.get("decode_errors", {}).values())


def _stream_records(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        yield from _output.read_stream(f, path)


def _pipe_records(path: str, stats: dict[str, Any], direct: Direct | None) -> Iterator[dict]:
    """The records of stdin (``-``) or a named pipe, read once (``pipe_input``): a record stream,
    or a capture metered as a file is (``tcpdump -w - | flowtap ra -r -``)."""
    try:
        with pipe_input.sniffed(path) as (head, src):
            if head.startswith(SQLITE_MAGIC[:6]):
                raise SourceError("an archive cannot be read from a pipe: name the file")
            if not pipe_input.is_capture(head):
                if head and not head.startswith(b'{"flowtap"'):
                    raise SourceError("neither a capture (pcap, pcapng) nor a flowtap record "
                                      "stream (write one with `-w -`)")
                yield from _output.read_stream(pipe_input.text(head, src), path)
                return
            with pipe_input.relay(head, src) as relayed:
                yield from _capture_records(relayed, stats, direct)
    except OSError as e:
        raise SourceError(e.strerror or str(e)) from None


def open_records(path: str, selection: Selection, stats: dict[str, Any],
                 direct: Direct | None = None, need: frozenset[str] | None = None) -> Iterator[dict]:
    """Yield the records of one input that pass ``selection``, whatever kind the input is.

    A file is sniffed: a record stream (``-w`` output), a SQLite archive or directory
    (``open_archive``), else a capture file metered with the default configuration (meter
    counters are added to ``stats``). ``-`` (stdin) and named pipes may hold a record stream or
    a capture (``_pipe_records``). With ``direct``, a capture file is handed to
    ``direct(path, stats_out)`` instead and yields no records (``_run`` passes it only when
    nothing would select among them). ``need``: the record keys the caller reads (archives
    then fetch only those).

    :raises SourceError: the input cannot be read, or fails part way (after its records).
    """
    keep = selection.keep
    if pipe_input.is_pipe(path):
        records: Iterable[dict] = _pipe_records(path, stats, direct)
    elif os.path.isdir(path):
        records, keep = open_archive(path, selection, need), None
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise SourceError(e.strerror or str(e)) from None
        if head == SQLITE_MAGIC:
            records, keep = open_archive(path, selection, need), None
        elif head.startswith(b'{"flowtap"'):
            records = _stream_records(path)
        else:
            records = _capture_records(path, stats, direct)
    try:
        for r in records:
            if keep is None or keep(r):
                yield r
    except _output.StreamError as e:
        raise SourceError(str(e).removeprefix(f"{path}: ")) from None


def read_inputs(paths: Iterable[str], selection: Selection, stats: dict[str, Any],
                errors: list[str], direct: Direct | None = None,
                need: frozenset[str] | None = None) -> Iterator[dict]:
    """Chain the records of every input; a failing input adds a line to ``errors`` and the
    next input is read."""
    for path in paths:
        try:
            yield from open_records(path, selection, stats, direct, need)
        except SourceError as e:
            errors.append(f"{path}: {e}")


def parse_range(spec: str | None) -> tuple[str, int, int | None]:
    """Argus ``-N``: ``[io]num``, ``[io]start-end`` or ``[io]start+num`` -> (side, skip, stop).

    :raises click.BadParameter: for anything else.
    """
    if spec is None:
        return "i", 0, None
    side = spec[0] if spec[:1] in ("i", "o") else "i"
    body = spec[1:] if spec[:1] in ("i", "o") else spec
    try:
        if "-" in body:
            a, b = (int(x) for x in body.split("-", 1))
            skip, stop = a - 1, b
        elif "+" in body:
            a, n = (int(x) for x in body.split("+", 1))
            skip, stop = a - 1, a + n
        else:
            skip, stop = 0, int(body)
    except ValueError:
        raise click.BadParameter(f"{spec!r} is not N, START-END or START+N", param_hint="-N")
    if skip < 0 or stop < skip:
        raise click.BadParameter(f"{spec!r} is an empty range", param_hint="-N")
    return side, skip, stop


# --- the shared options -----------------------------------------------------------------------

def read_options(fn: Callable) -> Callable:
    """The options ra, racluster and rasort share (Argus names and meanings)."""
    opts = [
        click.option("-r", "paths", multiple=True, metavar="PATH",
                     help="Input: archive file or directory, capture file, record stream file, "
                          "named pipe, or - (stdin: a capture or a record stream). Repeatable; "
                          "several may follow one -r. Default: stdin."),
        click.option("-s", "field_items", multiple=True, metavar="FIELD",
                     help="Fields to print (Argus -s: f1 f2 ..., +f adds, -f removes, f:width)."),
        click.option("-n", "numeric", count=True,
                     help="-n numeric ports, -nn numeric protocols too."),
        click.option("-u", "utime", is_flag=True, help="Print times as Unix seconds."),
        click.option("-q", "quiet", is_flag=True,
                     help="Print no records; one summary line on stderr "
                          "(packets N records N evicted N errors N)."),
        click.option("-c", "delimiter", metavar="CHAR", help="Delimited output with a label line."),
        click.option("-L", "label_every", type=int, default=0, metavar="N",
                     help="Labels: 0 once (default), N every N records, -1 never."),
        click.option("-M", "modes", multiple=True, metavar="MODE",
                     help="json: JSON lines; racluster also norep, correct, nocorrect."),
        click.option("-N", "count_spec", metavar="N", help="Only records N (or START-END, START+N)."),
        click.option("-t", "time_range", metavar="RANGE",
                     help="Time range, e.g. 2024/01/31.10:00-2024/01/31.11:00, -1h, START+30m."),
        click.option("-Z", "zflags", type=click.Choice(["s", "d", "b"]),
                     help="State column shows TCP flags seen: s source, d destination, b both."),
        click.option("-X", "no_rc", is_flag=True, help="Accepted for Argus habits; no effect."),
        click.option("-w", "write", metavar="PATH",
                     help="Write a record stream to PATH (- is stdout) instead of text."),
        click.option("-S", "server", metavar="URL",
                     help="Input: the live record stream of the sensor at https://SENSOR[:PORT]: "
                          "records as its archive gets them, from now on, the filter applied "
                          "there. Needs an API token (--token-file or FLOWTAP_TOKEN)."),
        click.option("--token-file", metavar="FILE",
                     help="With -S: a file holding the API token made on the sensor's API tokens "
                          "page (or set FLOWTAP_TOKEN; never put a token on the command line)."),
        click.option("--cacert", metavar="FILE",
                     help="With -S: trust this certificate (the sensor's own, PEM) instead of "
                          "the system's CAs."),
        click.option("--around", metavar="ALERT_ID[:SECONDS]",
                     help="Every session of either host of this imported alert within SECONDS "
                          "(default 900) of it (`flowtap alerts` lists the ids)."),
        click.argument("filter_words", nargs=-1, metavar="[- FILTER...]"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _usage(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except _fields.FieldError as e:
        raise click.UsageError(str(e)) from None


def _check_modes(command: str, modes: tuple[str, ...]) -> set[str]:
    bad = [m for m in modes if m not in MODES[command]]
    if bad:
        raise click.UsageError(f"unknown -M mode {bad[0]!r} (known: {', '.join(MODES[command])})")
    return set(modes)


def _open_output(write: str | None):
    if write is None or write == "-":
        return sys.stdout, False
    try:
        return open(write, "w", encoding="utf-8"), True
    except OSError as e:
        _fail(f"{write}: {e.strerror}", 1)


def _count_capture(path: str, stats_out: dict[str, Any], counted: list[int]) -> None:
    """Meter a capture file and add its record count to counted[0] (no records are built)."""
    from .capture import meter_file_raw

    for n in meter_file_raw(path, stats_out=stats_out, count_only=True):
        counted[0] += n


def _run(command: str, o: dict[str, Any], transform: Callable[[Iterator[dict]], Iterable[dict]]
         | None = None, merged: Merged | None = None, text: Text | None = None) -> None:
    """Read, select, optionally transform (cluster, sort), then print or count.

    ``merged(paths, selection, errors, need)`` may stand in for reading and transforming (racluster
    in SQL); when it returns None the inputs are read and transformed as usual. Before both,
    ``text(paths, selection, out, fields, opts)`` may print the whole text output itself (racluster
    in C) and return True; when it returns False it has printed nothing.
    """
    # Records are acyclic dicts, by the million: the cyclic collector would only rescan them
    # (a third of racluster's time over large archives). Back on after: a caller in the same
    # process (tests, the tutorial's runner) keeps its collector.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _read_and_print(command, o, transform, merged, text)
    finally:
        if collecting:
            gc.enable()


def _read_and_print(command: str, o: dict[str, Any], transform: Callable[[Iterator[dict]], Iterable[dict]]
                    | None, merged: Merged | None, text: Text | None) -> None:
    """``_run``'s work, with the cyclic collector off."""
    modes = _check_modes(command, o["modes"])
    fields = _usage(lambda: _fields.parse_field_list(o["field_items"]))
    if o["delimiter"] is not None:
        o["delimiter"] = o["delimiter"].replace("\\t", "\t")
    side, skip, stop = parse_range(o["count_spec"])
    live = o["server"] is not None
    if live and o["paths"]:
        raise click.UsageError("-S (a sensor's live stream) and -r (files) cannot be combined")
    # A live stream's filter and -t range are the sensor's to apply.
    selection = Selection() if live else Selection.build(o["filter_words"], o["time_range"])
    if o["around"]:
        if live:
            raise click.UsageError("--around reads archives (-r), not a live stream (-S)")
        selection = _around(o["around"], o["paths"], selection)
    stats: dict[str, Any] = {}
    errors: list[str] = []
    # Nothing selects among the records of a capture file: count them or print them in C.
    plain = (not live and selection.ast is None and transform is None and merged is None
             and not skip and stop is None)
    direct: Direct | None = None
    counted = [0]
    need: frozenset[str] | None = frozenset()      # record keys the output reads (None: all)
    if o["quiet"]:
        if plain and _fastpath.enabled():
            direct = lambda path, got: _count_capture(path, got, counted)
    else:
        out, owned = _open_output(o["write"])
        opts = _fields.FormatOptions(numeric=o["numeric"], utime=o["utime"], zflags=o["zflags"],
                                     delimited=o["delimiter"] is not None)
        need = None if o["write"] is not None else _fields.keys_read(fields, opts)
        fast = None
        if plain and o["write"] is None and "json" not in modes:
            fast = _fastpath.TextFast.create(out, fields, opts, o["delimiter"], o["label_every"])
        if fast is not None:
            writer, direct = fast.writer, fast.write_capture
        else:
            writer = _output.make_writer(out, fields, opts, o["delimiter"], o["label_every"],
                                         json_lines="json" in modes, stream=o["write"] is not None)
        if live and hasattr(out, "reconfigure"):
            out.reconfigure(line_buffering=True)    # each record out as it arrives, even in a pipe
    if (text is not None and not o["quiet"] and not live and o["write"] is None
            and "json" not in modes and o["count_spec"] is None and o["label_every"] <= 0
            and text(o["paths"] or ("-",), selection, out, fields, opts)):
        return
    records: Iterable[dict]
    if live:
        records = _live_records(o, errors)
    else:
        # Printed as read (no clustering or sorting): archives need fetch only what is printed.
        plain_need = need if transform is None and merged is None else None
        records = read_inputs(o["paths"] or ("-",), selection, stats, errors, direct, plain_need)
    if side == "i" and (skip or stop is not None):
        records = itertools.islice(records, skip, stop)
    sql_merged = (merged(o["paths"] or ("-",), selection, errors, need)
                  if merged is not None and not live else None)
    if sql_merged is not None:
        records = sql_merged                        # the inputs above are never read
    elif transform is not None:
        records = transform(records)
    if side == "o" and (skip or stop is not None):
        records = itertools.islice(records, skip, stop)
    if o["quiet"]:
        n = sum(1 for _ in records) + counted[0]
        click.echo(f"packets {stats.get('packets', 0)} records {n} "
                   f"evicted {stats.get('evicted', 0)} errors {stats.get('errors', 0)}", err=True)
    else:
        try:
            for r in records:
                writer.write(r)
            writer.close()
        finally:
            if owned:
                out.close()
    for line in errors:
        click.echo(f"flowtap: {line}", err=True)
    if errors:
        raise click.exceptions.Exit(1)


def _api_token(token_file: str | None) -> str:
    """The API token for -S: from --token-file, else FLOWTAP_TOKEN (never from argv: ps shows it).

    :raises click.UsageError: no token, or the file holds something else.
    """
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read(4096).strip()
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"--token-file {token_file}: {getattr(e, 'strerror', None) or e}", 2)
    else:
        token = os.environ.get("FLOWTAP_TOKEN", "").strip()
    if not token:
        raise click.UsageError("-S needs an API token: --token-file FILE or FLOWTAP_TOKEN "
                               "(make one on the sensor's API tokens page)")
    if not token.isprintable() or " " in token:
        raise click.UsageError("the API token has spaces or control characters: is that the token?")
    return token


def _live_records(o: dict[str, Any], errors: list[str]) -> Iterator[dict]:
    """Attach to the sensor of -S (a refusal ends the command here, exit 1, or 2 for a bad
    filter) and return its records. A stream that breaks adds a line to ``errors`` after the
    records that arrived; Ctrl-C ends it like the end of a file."""
    from . import stream_client

    url = o["server"]
    try:
        live = stream_client.attach(url, _api_token(o["token_file"]), " ".join(o["filter_words"]),
                                    o["time_range"], o["cacert"])
    except stream_client.StreamClientError as e:
        _fail(str(e) if e.exit_code == 2 else f"{url}: {e}", e.exit_code)

    def follow() -> Iterator[dict]:
        with live:
            try:
                yield from live.records()
            except stream_client.StreamClientError as e:
                errors.append(f"{url}: {e}")
            except KeyboardInterrupt:
                return
    return follow()


# --- commands ---------------------------------------------------------------------------------

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT, epilog="""\b
Example:
  flowtap ra -n -r capture.pcap - tcp and port 80
  flowtap racluster -L0 -M norep -m saddr daddr -u -n -r capture.pcap - tcp
  flowtap racluster -r capture.pcap -w - | flowtap rasort -m bytes -s stime saddr daddr bytes""")
def cli() -> None:
    """flowtap: an inline network sensor writing Argus-style session records."""


@cli.command(cls=ArgusCommand, context_settings=CONTEXT, epilog="""\b
Example:
  flowtap ra -u -Z b -L0 -n -r capture.pcap -s stime proto saddr sport daddr dport spkts sappbytes dpkts dappbytes state - tcp
  flowtap ra -n -u -c , -r capture.pcap -s stime saddr daddr bytes - host 10.0.0.1 and not port 53
  zcat capture.pcap.gz | flowtap ra -n -r - - udp
  FLOWTAP_TOKEN=... flowtap ra -n -S https://sensor --cacert sensor.pem - tcp and port 443""")
@read_options
def ra(**o: Any) -> None:
    """Read session records (like Argus ra) and print them.

    The filter after a lone - uses Argus's language: host, net (CIDR or 10.1), port (53,
    domain, 1-1024), src/dst, tcp udp icmp icmp6 arp ip ipv4 ipv6, proto N, comparisons
    (pkts gt 10, src bytes gte 1000, appbytes, ttl, tos, vid, dur), TCP flags seen (syn synack
    fin reset retrans ack push urg ecn), states (est con req int timeout, state FIN), man,
    alert, sid N, gid N (an imported IDS alert links to the session: `flowtap alerts`),
    joined by and/or/not (equal precedence, left to right, as in Argus) and parentheses.
    """
    _run("ra", o)


@cli.command(cls=ArgusCommand, context_settings=CONTEXT, epilog="""\b
Example:
  flowtap racluster -r capture.pcap -n
  flowtap racluster -L0 -M norep -m saddr daddr -u -n -r capture.pcap - tcp
  flowtap racluster -m saddr/24 -s stime dur trans saddr bytes -r capture.pcap""")
@click.option("-m", "keys", multiple=True, metavar="KEY",
              help="Flow key fields (saddr/24 masks; none: one cluster). "
                   "Default: srcid proto saddr sport daddr dport.")
@read_options
def racluster(keys: tuple[str, ...], **o: Any) -> None:
    """Merge records of the same flow (or of any -m key), like Argus racluster."""
    modes = _check_modes("racluster", o["modes"])
    from .cluster import Clusterer, parse_keys

    parsed = _usage(lambda: parse_keys(keys)) if keys else None
    correct = True if "correct" in modes else False if "nocorrect" in modes else None

    def merge(records: Iterator[dict]) -> Iterator[dict]:
        c = Clusterer(parsed, norep="norep" in modes, correct=correct)
        for r in records:
            c.add(r)
        return c.results()

    def in_sql(paths: tuple[str, ...], selection: Selection, errors: list[str],
               need: frozenset[str] | None) -> Iterable[dict] | None:
        # -m keys over archives only, no reversal, no input-side -N: GROUP BY in SQL.
        spec = o["count_spec"]
        if (parsed is None or correct or (spec and not spec.startswith("o"))
                or not all(is_archive(p) for p in paths)):
            return None
        from . import query
        return query.cluster_archives(paths, parsed, selection.ast, norep="norep" in modes,
                                      errors=errors, need=need)
    def in_c(paths: tuple[str, ...], selection: Selection, out: Any, fields: list[_fields.Field],
             opts: _fields.FormatOptions) -> bool:
        # The same cases as in SQL, printed in C (falls back to in_sql, then merge).
        if parsed is None or correct or not all(is_archive(p) for p in paths):
            return False
        return _fastpath.cluster_text(out, paths, parsed, selection.ast, fields, opts,
                                      o["delimiter"], o["label_every"], "norep" in modes)
    o["modes"] = tuple(m for m in o["modes"] if m == "json")
    _run("racluster", o, merge, in_sql, in_c)


@cli.command(cls=ArgusCommand, context_settings=CONTEXT, epilog="""\b
Example:
  flowtap rasort -m bytes -r capture.pcap -s stime saddr daddr bytes
  flowtap racluster -r capture.pcap -w - | flowtap rasort -m daddr dport saddr""")
@click.option("-m", "keys", multiple=True, metavar="FIELD",
              help="Sort fields, most significant first (volumes sort largest first). "
                   "Default: stime.")
@read_options
def rasort(keys: tuple[str, ...], **o: Any) -> None:
    """Sort records by fields, like Argus rasort."""
    names = keys or ("stime",)
    sort_fields = _usage(lambda: [_fields.resolve(k) for k in names])
    getters = [_fields.sort_value(f) for f in sort_fields]

    def order(records: Iterator[dict]) -> list[dict]:
        return sorted(records, key=lambda r: tuple(g(r) for g in getters))
    _run("rasort", o, order)


@cli.command(context_settings=CONTEXT, epilog="""\b
Example:
  flowtap record -r capture.pcap -d /tmp/flowtap        # meter a capture into archives
  flowtap record -c /etc/flowtap/flowtap.toml -i br0    # the sensor daemon
  flowtap record -c flowtap.toml --check-config""")
@click.option("-c", "config_path", metavar="CONFIG", help="TOML config (default /etc/flowtap/flowtap.toml).")
@click.option("-i", "interfaces", multiple=True, metavar="IFACE", help="Live interface (repeatable).")
@click.option("-r", "captures", multiple=True, metavar="CAPTURE", help="Capture file (repeatable).")
@click.option("-f", "bpf", metavar="BPF", help="Kernel BPF filter (overrides capture.bpf).")
@click.option("-d", "data_dir", metavar="DATA_DIR", help="Archive directory (overrides archive.dir).")
@click.option("--export", "exports", multiple=True, metavar="URL",
              help="IPFIX collector, ipfix+udp://HOST:PORT or ipfix+tcp://HOST:PORT (repeatable).")
@click.option("--check-config", is_flag=True, help="Validate the configuration and exit.")
@click.option("--runtime-dir", metavar="DIR", help="Where status.json goes (default /run/flowtap).")
@click.option("-q", "quiet", is_flag=True, help="No progress line.")
def record(config_path: str | None, interfaces: tuple[str, ...], captures: tuple[str, ...],
           bpf: str | None, data_dir: str | None, exports: tuple[str, ...], check_config: bool,
           runtime_dir: str | None, quiet: bool) -> None:
    """Meter capture files or live interfaces into rotating SQLite archives.

    Files are metered on packet time and their archives rotate by packet time; a truncated or
    corrupt capture still has everything that could be read recorded (exit status 1).
    """
    from . import config as _config
    from .ipfix import ExportError, parse_collector
    from .recorder import Recorder

    def load() -> _config.Config:
        return _config.override(_config.load(config_path), interfaces=interfaces, bpf=bpf,
                                data_dir=data_dir, exports=exports)
    try:
        cfg = load()
        for url in cfg.export.collectors:
            parse_collector(url)
    except _config.ConfigError as e:
        _fail(f"config: {e}", 2)
    except ExportError as e:
        _fail(f"config: export.collectors: {e}", 2)
    if check_config:
        click.echo(f"config ok (digest {cfg.digest()})")
        return
    if not captures and not cfg.capture.interfaces:
        raise click.UsageError("nothing to record: give -r CAPTURE or -i IFACE (or capture.interfaces)")
    _logging(verbose=False)
    rec = Recorder(cfg, progress=not quiet and sys.stderr.isatty(), reload=load,
                   runtime_dir=runtime_dir)
    from .archive import ArchiveError
    if captures:
        try:
            errors = rec.record_files(list(captures))
        except ArchiveError as e:
            _fail(str(e), 1)
        for line in errors:
            click.echo(f"flowtap: {line}", err=True)
        if errors:
            raise click.exceptions.Exit(1)
        return
    from .capture import CaptureError
    try:
        status = rec.record_live()
    except (ArchiveError, CaptureError, ExportError) as e:
        _fail(str(e), 1)
    raise click.exceptions.Exit(status)


@cli.group(context_settings=CONTEXT, epilog="""\b
Example:
  flowtap bridge up br0 eth0 eth1
  flowtap bridge status br0
  flowtap bridge down br0""")
def bridge() -> None:
    """Make, inspect or remove the transparent bridge the sensor sits on."""


@bridge.command("up", context_settings=CONTEXT, epilog="""\b
Example:
  flowtap bridge up br0 eth0 eth1""")
@click.argument("name")
@click.argument("ports", nargs=-1, required=True)
def bridge_up(name: str, ports: tuple[str, ...]) -> None:
    """Create bridge NAME from PORTS: no address, STP off, ports promiscuous, no netfilter."""
    from . import bridge as _bridge
    try:
        _bridge.up(name, list(ports))
    except _bridge.BridgeError as e:
        _fail(str(e), 1)


@bridge.command("down", context_settings=CONTEXT, epilog="""\b
Example:
  flowtap bridge down br0""")
@click.argument("name")
def bridge_down(name: str) -> None:
    """Release the ports of bridge NAME and delete it."""
    from . import bridge as _bridge
    try:
        _bridge.down(name)
    except _bridge.BridgeError as e:
        _fail(str(e), 1)


@bridge.command("status", context_settings=CONTEXT, epilog="""\b
Example:
  flowtap bridge status br0
  flowtap bridge status br0 --json""")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bridge_status(name: str, as_json: bool) -> None:
    """Show bridge NAME and its ports: state, carrier, speed and counters."""
    import json
    from . import bridge as _bridge
    try:
        st = _bridge.status(name)
    except _bridge.BridgeError as e:
        _fail(str(e), 1)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    b = st["bridge"]
    click.echo(f"{name}: {b['operstate']}, STP {'on' if st['stp'] else 'off'}, "
               f"addresses: {' '.join(st['addresses']) or 'none'}")
    for p in st["ports"]:
        speed = f"{p['speed']} Mb/s" if p["speed"] else "speed unknown"
        click.echo(f"  {p['name']}: {p['operstate']}, carrier {'yes' if p['carrier'] else 'no'}, {speed}, "
                   f"promisc {'on' if p['promisc'] else 'off'}, rx {p['rx_packets']} packets "
                   f"({p['rx_dropped']} dropped), tx {p['tx_packets']} packets")


@cli.command(context_settings=CONTEXT, epilog="""\b
Example:
  sudo flowtap demo
  sudo flowtap demo --data-dir /tmp/flowtap-demo --listen 127.0.0.1:8080""")
@click.option("--data-dir", default="/tmp/flowtap-demo", show_default=True, help="Where archives go.")
@click.option("--runtime-dir", default="/tmp/flowtap-demo/run", show_default=True,
              help="Where the recorder's status.json goes.")
@click.option("--listen", "web_listen", default="127.0.0.1:8080", show_default=True,
              help="Serve the admin page here (when the web part is installed); '' for none.")
def demo(data_dir: str, runtime_dir: str, web_listen: str) -> None:
    """Run the sensor on a bridge in network namespaces with real traffic (needs root)."""
    from . import demo as _demo
    has_web = "web" in cli.commands
    raise click.exceptions.Exit(_demo.run(data_dir, runtime_dir, web_listen if has_web and web_listen else None))


@cli.command(context_settings=CONTEXT, epilog="""\b
Example:
  flowtap web -c /etc/flowtap/flowtap.toml
  flowtap web --listen 127.0.0.1:8080 --data-dir /tmp/flowtap-demo --runtime-dir /tmp/flowtap-demo/run""")
@click.option("-c", "config_path", metavar="CONFIG", help="TOML config the page shows and edits "
              "(default /etc/flowtap/flowtap.toml).")
@click.option("--listen", metavar="HOST:PORT", help="Serve here (default: web.listen of the config).")
@click.option("--data-dir", metavar="DIR", help="Archives in DIR/archive, the page's own files in DIR/web "
              "(default: beside archive.dir).")
@click.option("--runtime-dir", metavar="DIR", help="Where the recorder's status.json is (default /run/flowtap).")
def web(config_path: str | None, listen: str | None, data_dir: str | None, runtime_dir: str | None) -> None:
    """Serve the admin web page (dashboard, search, archives, configuration) through waitress.

    On first start it prints a one-time setup token (also stored, readable by its owner only, in
    the web directory) that the first visitor exchanges for the admin password.
    """
    from . import config as _config
    from .web import create_app, limits
    _logging(verbose=False)
    try:
        app = create_app(config_path=config_path, data_dir=data_dir, runtime_dir=runtime_dir)
    except _config.ConfigError as e:
        _fail(f"config: {e}", 2)
    listen = listen or app.config["FLOWTAP"].web.listen
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    creds = app.extensions["flowtap_auth"]
    if not creds.configured:
        token, _ = creds.setup_token()
        click.echo(f"flowtap web: no admin password yet; setup token: {token}", color=False)
        sys.stdout.flush()
    # Live streams and downloads hold a thread each and are capped; the server has four threads
    # more than those caps for the page, and drops a client that stops reading (web/limits.py).
    server = limits.make_server(app, listen)
    server.print_listen("Serving on http://{}:{}")
    server.run()


from .alerts_cli import alerts as _alerts_group  # noqa: E402 - the command group joins cli
cli.add_command(_alerts_group)


def _logging(verbose: bool) -> None:
    """Log to the journal under systemd, to stderr otherwise."""
    from .service import setup_logging
    setup_logging(verbose)


def main() -> None:
    """Console entry point (``flowtap``)."""
    try:
        cli(prog_name="flowtap")
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as ra does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
