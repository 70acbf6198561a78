"""The client side of ``flowtap ra -S URL``: attach to a sensor's live record stream.

The sensor's web service (``appliance/web/stream.py``) answers ``GET /api/v1/stream`` with JSON
lines: a header line, then one record per line as it reaches the archive, keep-alive lines while
nothing happens, and an ``end`` line when the sensor ends the stream. The filter (and ``-t``) go to
the sensor, which applies them in SQL; the token goes in an ``Authorization: Bearer`` header.
Standard library only: ``http.client`` over ``ssl``, certificates verified against the system's CAs
or, with ``cacert``, against that file alone (the sensor's own self-signed certificate).

Example::

    with attach("https://sensor", token, filter_text="tcp", cacert="sensor.pem") as live:
        for record in live.records():
            print(record["saddr"], record["daddr"])
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from typing import Any, Iterator

from . import __version__

PATH = "/api/v1/stream"
CONNECT_TIMEOUT = 10.0
# The sensor sends a line at least every 10 s; three missed in a row: it is gone.
READ_TIMEOUT = 30.0
MAX_LINE = 1 << 20


class StreamClientError(Exception):
    """Attaching failed or the stream broke; ``exit_code`` 2 for a bad filter or URL (the message
    is then complete in itself), else 1."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _endpoint(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of a sensor URL; a bare ``host[:port]`` means https.

    :raises StreamClientError: (exit code 2) for anything but an http(s) URL naming a host.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    try:
        port = parts.port
    except ValueError:
        raise StreamClientError(f"{url}: not a valid port", 2) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise StreamClientError(f"{url}: give the sensor as https://HOST[:PORT] "
                                "(or http:// on loopback)", 2)
    if parts.username or parts.password or parts.query or parts.fragment:
        raise StreamClientError(f"{url}: no user, query or fragment in the sensor's URL (the token goes "
                                "in --token-file or FLOWTAP_TOKEN)", 2)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/") + PATH


class LiveStream:
    """An attached stream: ``records()`` yields the sensor's records; ``header`` is its first line
    (with the attach point: archive name and rowid)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, header: dict):
        self.conn, self.resp, self.header = conn, resp, header

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def records(self) -> Iterator[dict[str, Any]]:
        """The records as they arrive; keep-alive lines are skipped.

        :raises StreamClientError: the sensor ended the stream, the connection broke or timed
            out, or a line is not JSON.
        """
        while True:
            line = self._line()
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise StreamClientError("the sensor sent a line that is not JSON") from None
            if not isinstance(obj, dict):
                raise StreamClientError("the sensor sent a line that is not a record")
            if "keepalive" in obj:
                continue
            if "end" in obj:
                raise StreamClientError(f"the sensor ended the stream: {obj['end']}")
            yield obj

    def _line(self) -> bytes:
        try:
            line = self.resp.readline(MAX_LINE)
        except TimeoutError:
            raise StreamClientError(f"the sensor sent nothing for {READ_TIMEOUT:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            raise StreamClientError(f"the connection broke ({_reason(e)})") from None
        if not line:
            raise StreamClientError("the sensor closed the connection")
        if not line.endswith(b"\n"):
            raise StreamClientError("the sensor's stream broke off mid-line")
        return line


def attach(url: str, token: str, filter_text: str = "", time_range: str | None = None,
           cacert: str | None = None) -> LiveStream:
    """Connect, authenticate and check the answer; the records follow through ``records()``.

    :param url: ``https://HOST[:PORT]`` (or ``http://`` for loopback, or a bare ``HOST``).
    :param token: an API token made on the sensor's web page.
    :param filter_text: a filter in Argus's language, applied by the sensor.
    :param time_range: a ``-t`` range, applied by the sensor.
    :param cacert: a PEM file to trust instead of the system CAs (the sensor's own certificate).
    :raises StreamClientError: refused (token, filter, too many streams), unreachable, or the
        certificate does not verify; ``exit_code`` 2 for a bad filter or URL.
    """
    scheme, host, port, path = _endpoint(url)
    params = {k: v for k, v in (("filter", filter_text), ("t", time_range)) if v}
    target = path + ("?" + urllib.parse.urlencode(params) if params else "")
    if scheme == "https":
        try:
            context = ssl.create_default_context(cafile=cacert)
        except (OSError, ssl.SSLError) as e:
            raise StreamClientError(f"--cacert {cacert}: {_reason(e)}") from None
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=CONNECT_TIMEOUT, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT)
    try:
        conn.request("GET", target, headers={"Authorization": f"Bearer {token}",
                                             "Accept": "application/x-ndjson",
                                             "User-Agent": f"flowtap/{__version__}"})
        conn.sock.settimeout(READ_TIMEOUT)
        resp = conn.getresponse()
        if resp.status != 200:
            raise StreamClientError(*_refusal(resp))
        stream = LiveStream(conn, resp, {})
        first = stream._line()
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("flowtap") != "stream":
            raise StreamClientError("the answer is not a flowtap record stream "
                                    "(is this a flowtap sensor?)")
        stream.header = header
        return stream
    except ssl.SSLCertVerificationError as e:
        conn.close()
        hint = "" if cacert else "; give the sensor's certificate with --cacert FILE"
        raise StreamClientError(f"the sensor's TLS certificate does not verify "
                                f"({e.verify_message}){hint}") from None
    except StreamClientError:
        conn.close()
        raise
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise StreamClientError(f"cannot attach: {_reason(e)}") from None


def _refusal(resp: http.client.HTTPResponse) -> tuple[str, int]:
    """(message, exit code) for a non-200 answer; the sensor's own line where it gives one."""
    text = resp.read(4096).decode("utf-8", "replace").strip()
    plain = resp.getheader("Content-Type", "").startswith("text/plain")   # not a proxy's HTML page
    said = text.splitlines()[0] if text and plain else ""
    if resp.status == 401:
        return f"the sensor refused the token ({resp.status}): {said or 'not valid'}", 1
    if resp.status == 400 and said:
        return said, 2                  # a bad filter or -t range, as a local one would say it
    return f"the sensor answered {resp.status} {resp.reason}" + (f": {said}" if said else ""), 1


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
