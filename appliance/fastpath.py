"""ra's text output for capture files without building records: lines printed in C.

When ``ra`` reads capture files with no filter, ``-t``, ``-N``, ``-w`` or ``-M`` and every column
is one C prints (``capture.FORMAT_FIELDS``), ``TextFast`` writes the lines that
``capture.format_file`` returns straight to the binary stdout. It prints exactly what
``output.TextWriter`` prints: the same label line at the same records, the same columns; a record
that C leaves to Python goes through ``capture.to_record`` and the ``TextWriter`` itself. Set
``FLOWTAP_NO_FASTPATH=1`` to always take the Python path (the tests compare the two).

Example::

    fast = TextFast.create(sys.stdout, fields, opts, ",", label_every=0)
    if fast is not None:
        fast.write_capture("capture.pcap", stats)   # records of other inputs: fast.writer.write
        fast.writer.close()
"""

from __future__ import annotations

import os
from typing import IO, Any, Sequence

from .fields import FIELDS, Field, FormatOptions
from .output import _ADDR_PORT, TextWriter     # TextWriter joins _ADDR_PORT's pairs as addr.port


def enabled() -> bool:
    """False when ``FLOWTAP_NO_FASTPATH`` is set: records are then always built and printed in
    Python (``ra -q`` counts them too)."""
    return not os.environ.get("FLOWTAP_NO_FASTPATH")


class _BinaryText:
    """A text stream over a binary one, for the TextWriter sharing TextFast's output."""

    def __init__(self, binary: IO[bytes], encoding: str, errors: str):
        self.binary, self.encoding, self.errors = binary, encoding, errors

    def write(self, text: str) -> None:
        self.binary.write(text.encode(self.encoding, self.errors))

    def flush(self) -> None:
        self.binary.flush()


class TextFast:
    """Text output (``-c`` or aligned columns) whose capture-file records are printed in C.

    ``writer`` is the ``TextWriter`` for every other record; both write to ``out``'s binary buffer,
    in order.
    """

    def __init__(self, out: IO[str], fields: Sequence[Field], opts: FormatOptions,
                 delimiter: str | None, label_every: int, srcid: str):
        self._binary = out.buffer
        encoding, errors = out.encoding or "utf-8", out.errors or "strict"
        self.writer = TextWriter(_BinaryText(self._binary, encoding, errors), fields, opts,
                                 delimiter, label_every)
        self._label = self.writer.label_line.encode(encoding, errors)
        self._fields, self._opts, self._delimiter = list(fields), opts, delimiter
        self._encoding, self._srcid = encoding, srcid
        self._format: Any = None

    @classmethod
    def create(cls, out: IO[str], fields: Sequence[Field], opts: FormatOptions,
               delimiter: str | None, label_every: int) -> TextFast | None:
        """A TextFast for these options, or None when only the Python path prints them (service
        names without -n, -Z with odd values, a field C does not print, a text stream without
        a binary buffer, or ``FLOWTAP_NO_FASTPATH`` set)."""
        if not enabled() or not hasattr(out, "buffer") or not fields:
            return None
        if any(f.kind != FIELDS.get(f.key, f).kind for f in fields):
            return None                                   # C prints a key one way only
        if opts.numeric == 0 and any(f.kind == "port" for f in fields):
            return None                                   # getservbyport: Python's job
        from .config import SensorConfig
        out.flush()
        return cls(out, fields, opts, delimiter, label_every, SensorConfig().id)

    def _line_format(self) -> Any:
        """The capture.LineFormat of these columns (built at the first capture), or False."""
        if self._format is None:
            from . import capture
            try:
                delimiter = (" " if self._delimiter is None else self._delimiter).encode(self._encoding)
                self._format = capture.LineFormat(
                    self._columns(capture), numeric=self._opts.numeric, utime=self._opts.utime,
                    zflags=self._opts.zflags, delimited=self._opts.delimited,
                    rstrip=self._delimiter is None, delimiter=delimiter, srcid=self._srcid)
            except (ValueError, UnicodeError):
                self._format = False
        return self._format

    def _columns(self, capture: Any) -> list[tuple[str, int, int, int]]:
        """TextWriter's columns as (key, pad, separator, width) (see ``_columns_of``)."""
        return self._columns_of(self._fields, self._delimiter, capture)

    @staticmethod
    def _columns_of(fields: Sequence[Field], delimiter: str | None,
                    capture: Any) -> list[tuple[str, int, int, int]]:
        """TextWriter's columns as (key, pad, separator, width): fitted to width in aligned output
        (ports to the left) or with ``field:width``; aligned ``saddr sport`` join as addr.port."""
        aligned = delimiter is None
        cols = []
        for f in fields:
            if aligned or f.width_set:
                pad = capture.PAD_LEFT if f.kind == "port" else capture.PAD_RIGHT
            else:
                pad = capture.PAD_NONE
            cols.append([f.key, pad, capture.SEP_DELIM, f.width])
        i = 0
        while aligned and i < len(fields):
            if i + 1 < len(fields) and _ADDR_PORT.get(fields[i + 1].name) == fields[i].name:
                cols[i + 1][1:3] = [capture.PAD_LEFT, capture.SEP_PORT]
                i += 2
            else:
                i += 1
        return [tuple(c) for c in cols]

    def write_capture(self, path: str, stats_out: dict[str, Any]) -> None:
        """Meter one capture file and print its records.

        :raises capture.CaptureError: as ``capture.meter_file``, after printing what was read.
        """
        from . import capture
        w = self.writer
        fmt = self._line_format()
        if not fmt:
            for record in capture.meter_file(path, stats_out=stats_out):
                w.write(record)
            return
        every, write, label = w.label_every, self._binary.write, self._label

        def room() -> int:
            return every - w.count % every

        for k, item in capture.format_file(path, fmt, room if every > 0 else None,
                                           stats_out=stats_out):
            if k:
                if every >= 0 and (w.count == 0 or (every > 0 and w.count % every == 0)):
                    write(label)
                write(item)
                w.count += k
            else:
                w.write(capture.to_record(item, fmt.srcid))


# racluster keys C merges by (cluster.c), and the record keys it can print.
_CLUSTER_KEYS = frozenset(("srcid", "proto", "saddr", "sport", "daddr", "dport"))


def cluster_text(out: IO[str], paths: Sequence[str], keys: Sequence[Any], ast: Any,
                 fields: Sequence[Field], opts: FormatOptions, delimiter: str | None,
                 label_every: int, norep: bool) -> bool:
    """Print ``racluster -m KEYS`` over archive files and directories in C (cluster.c) and return
    True; or return False, having printed nothing, where only the Python path prints exactly the
    same (a key other than srcid/proto/addresses/ports, a field C does not print, -Z, -L N,
    service names, values C does not merge as Python, an unreadable input, SQL that needs
    Python's functions, or ``FLOWTAP_NO_FASTPATH``).

    :param keys: ``cluster.parse_keys`` of ``-m``.
    :param ast: the filter with the ``-t`` range (``cli.Selection.ast``).
    Example: ``cluster_text(sys.stdout, ["archive/"], parse_keys(["saddr"]), None, fields, opts,
    None, 0, False)``
    """
    from . import archive, capture, fields as _fields, query

    if (not enabled() or not hasattr(out, "buffer") or not fields or opts.zflags
            or label_every > 0 or any(k.key not in _CLUSTER_KEYS for k in keys)):
        return False
    if any(f.kind != FIELDS.get(f.key, f).kind for f in fields):
        return False
    need = query.merge_columns(keys, _fields.keys_read(fields, opts) - {"trans"})
    columns = [k for k in query.RECORD_ORDER if k in need]
    encoding = out.encoding or "utf-8"
    try:
        fmt = capture.LineFormat(
            TextFast._columns_of(fields, delimiter, capture), numeric=opts.numeric,
            utime=opts.utime, delimited=opts.delimited, rstrip=delimiter is None,
            delimiter=(" " if delimiter is None else delimiter).encode(encoding))
        label = TextWriter(out, fields, opts, delimiter, label_every).label_line.encode(
            encoding, out.errors or "strict")
        if query.uses_alerts(ast):
            return False              # the alert links live in the reading connection (SQL)
        files = [f for p in paths for f in query.archive_files(p)]
        c = capture.ArchiveCluster([(k.key, k.prefix) for k in keys], columns, norep)
    except (capture.ClusterDeclined, query.QueryError, ValueError, UnicodeError, OSError):
        return False
    with c:
        try:
            for path in files:
                fq = query.plan_file(path, ast)
                fq.conn.close()
                if fq.where is not None:
                    where, params = fq.where
                    c.read(archive.readonly_uri(path), query.record_sql(where, columns=columns),
                           params)
            n = c.finish(fmt)
        except (capture.ClusterDeclined, query.QueryError, OSError):
            return False
        # Printing from here on: C checked every line in finish.
        out.flush()
        if n and label_every == 0:
            out.buffer.write(label)
        for chunk in c.lines():
            out.buffer.write(chunk)
    out.buffer.flush()
    return True
