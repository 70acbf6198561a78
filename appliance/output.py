"""Record writers for ra and friends: ra's aligned columns, ``-c`` delimited text, ``-M json`` and
the record stream of ``-w -`` (read back by ``-r -``).

Label lines follow ra: printed before the first record (never when nothing matched), then again
every N records with ``-L N``; ``-L 0`` prints them once, ``-L -1`` never.

The record stream is JSON lines: a first line ``{"flowtap": "records", "version": 1}``, then a
keys line ``{"keys": ["srcid", "seq", ...]}`` and one JSON array of values per record (a new keys
line whenever the next record's keys differ). It carries every key of every record, it is text, so
it survives pipes and terminals unchanged, and a reader can tell it from other input by its first
line.

Example::

    writer = make_writer(sys.stdout, fields, FormatOptions(numeric=1, utime=True), delimiter=",")
    for record in records:
        writer.write(record)
"""

from __future__ import annotations

import itertools
import json
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from .fields import Field, FormatOptions, Record, formatter

STREAM_HEADER = {"flowtap": "records", "version": 1}
_ADDR_PORT = {"sport": "saddr", "dport": "daddr"}


class StreamError(ValueError):
    """Input given as a record stream is not one (or is damaged); names the line."""


def _fit(text: str, width: int, left: bool) -> str:
    """Pad to ``width``; cut an over-long value to ``width`` with ``*`` last, as ra does."""
    n = len(text)
    if n == width:
        return text
    if n < width:
        return text.ljust(width) if left else text.rjust(width)
    return text[:width - 1] + "*"


def _padded(i: int, width: int, left: bool) -> str:
    """The expression for column i's text padded to ``width`` or cut as ``_fit`` does."""
    pad = "ljust" if left else "rjust"
    return f"(s{i}.{pad}({width}) if len(s{i} := f{i}(r)) <= {width} else s{i}[:{width - 1}] + '*')"


def _compile_line(cells: list[str], sep: str, formatters: dict[str, Callable]) -> Callable[[Record], str]:
    """One function that prints a whole line: a large archive prints millions of cells, and one
    Python call per cell instead of three (formatter, padding, join) is what makes ra fast.
    ``cells`` are expressions over ``r`` built only from field widths and indexes above."""
    src = f"def line(r):\n    return _sep.join(({', '.join(cells)},))\n"
    namespace: dict[str, Any] = {"_fit": _fit, "_sep": sep, **formatters}
    exec(compile(src, "<ra line>", "exec"), namespace)     # noqa: S102 - src holds no user text
    return namespace["line"]


class TextWriter:
    """ra's output: aligned columns by default, or fields joined by ``delimiter`` (``-c``).

    :param out: a text stream.
    :param fields: the columns, from ``fields.parse_field_list``.
    :param opts: number and time formatting (``-n``, ``-u``, ``-Z``).
    :param delimiter: ``None`` for aligned columns, else the ``-c`` character.
    :param label_every: ``-L`` value: 0 once, N > 0 every N records, -1 never.
    """

    def __init__(self, out: IO[str], fields: Sequence[Field], opts: FormatOptions,
                 delimiter: str | None = None, label_every: int = 0):
        self.out = out
        self.label_every = label_every
        self.count = 0
        aligned = delimiter is None
        fmts = [formatter(f, opts) for f in fields]
        # One cell expression per column; ra prints a port right after its address as
        # ``addr.port`` (``addr`` alone if none).
        cells: list[str] = []
        i = 0
        while i < len(fields):
            f = fields[i]
            cell = _padded(i, f.width, f.kind == "port") if aligned or f.width_set else f"f{i}(r)"
            if aligned and i + 1 < len(fields) and _ADDR_PORT.get(fields[i + 1].name) == f.name:
                cell += f" + ('.' if (t := f{i + 1}(r)) else ' ') + _fit(t, {fields[i + 1].width}, True)"
                i += 1
            cells.append(cell)
            i += 1
        if aligned:
            labels = [f.label[:f.width] if len(f.label) > f.width
                      else f.label.center(f.width) if f.centred else f.label.rjust(f.width)
                      for f in fields]
            self.label_line = " ".join(labels) + " \n"
        else:
            self.label_line = delimiter.join(f.label for f in fields) + "\n"
        self._line = _compile_line(cells, " " if aligned else delimiter,
                                   {f"f{i}": fmt for i, fmt in enumerate(fmts)})
        self._strip = aligned

    def write(self, record: Record) -> None:
        """Print one record, preceded by a label line when one is due."""
        every = self.label_every
        if every >= 0 and (self.count == 0 or (every > 0 and self.count % every == 0)):
            self.out.write(self.label_line)
        self.count += 1
        line = self._line(record)
        self.out.write((line.rstrip() if self._strip else line) + "\n")

    def close(self) -> None:
        """Flush the output."""
        self.out.flush()


class JsonWriter:
    """``-M json``: one JSON object per record, keyed by the selected field names."""

    def __init__(self, out: IO[str], fields: Sequence[Field]):
        self.out = out
        self.pairs = [(f.name, f.key) for f in fields]
        self.count = 0
        self._dumps = json.JSONEncoder(separators=(",", ":")).encode

    def write(self, record: Record) -> None:
        """Print one record as a JSON line."""
        self.count += 1
        row = {name: (record.get("trans", 1) if key == "trans" else record.get(key))
               for name, key in self.pairs}
        self.out.write(self._dumps(row) + "\n")

    def close(self) -> None:
        """Flush the output."""
        self.out.flush()


class StreamWriter:
    """``-w -``: the full records as a flowtap record stream (see the module docstring)."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.count = 0
        self._keys: tuple[str, ...] = ()
        self._dumps = json.JSONEncoder(separators=(",", ":")).encode
        out.write(self._dumps(STREAM_HEADER) + "\n")

    def write(self, record: Record) -> None:
        """Append one record to the stream (after a keys line when its keys differ)."""
        self.count += 1
        keys = tuple(record)
        if keys != self._keys:
            self._keys = keys
            self.out.write(self._dumps({"keys": keys}) + "\n")
        self.out.write(self._dumps(list(record.values())) + "\n")

    def close(self) -> None:
        """Flush the output."""
        self.out.flush()


def make_writer(out: IO[str], fields: Sequence[Field], opts: FormatOptions,
                delimiter: str | None = None, label_every: int = 0, json_lines: bool = False,
                stream: bool = False) -> Any:
    """Pick the writer for ra's output options (``-w -`` wins over ``-M json`` over text)."""
    if stream:
        return StreamWriter(out)
    if json_lines:
        return JsonWriter(out, fields)
    return TextWriter(out, fields, opts, delimiter, label_every)


def is_stream_start(first_line: str | bytes) -> bool:
    """True if ``first_line`` is a record stream's header line."""
    try:
        return json.loads(first_line) == STREAM_HEADER
    except ValueError:
        return False


def read_stream(lines: Iterable[str], name: str = "-", batch: int = 2048) -> Iterator[dict[str, Any]]:
    """Yield the records of a record stream (as written by ``StreamWriter``).

    Lines are decoded ``batch`` at a time with one ``json.loads``; a bad batch is decoded again
    line by line to name the bad line.

    :param lines: the stream's lines, header first.
    :param name: the source's name for error messages.
    :raises StreamError: when the header is missing or a line is neither a keys line nor a record.
    """
    it = iter(lines)
    if not is_stream_start(next(it, "")):
        raise StreamError(f"{name}: not a flowtap record stream (write one with `-w -`)")
    keys: list[str] | None = None
    lineno = 1
    while True:
        chunk = [line for line in itertools.islice(it, batch)]
        if not chunk:
            return
        try:
            values = json.loads("[" + ",".join(chunk) + "]")
        except ValueError:
            values = None
        if values is None or len(values) != len(chunk):
            values = [_decode_line(line, name, lineno + 1 + i) for i, line in enumerate(chunk)]
        for i, v in enumerate(values):
            if isinstance(v, list) and keys is not None and len(v) == len(keys):
                yield dict(zip(keys, v))
            elif isinstance(v, dict) and isinstance(v.get("keys"), list):
                keys = v["keys"]
            else:
                raise StreamError(f"{name}: line {lineno + 1 + i}: not a record")
        lineno += len(chunk)


def _decode_line(line: str, name: str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise StreamError(f"{name}: line {lineno}: not a record") from None
