"""systemd integration: sd_notify (READY, STATUS, WATCHDOG) and logging to the journal.

Everything degrades to plain behaviour outside systemd: no NOTIFY_SOCKET means notifications are
no-ops, and logs go to stderr.
"""
from __future__ import annotations

import logging
import os
import sys

try:
    from systemd import daemon as _daemon
    from systemd import journal as _journal
except ImportError:              # systemd-python is optional off the appliance
    _daemon = None
    _journal = None


def under_systemd() -> bool:
    """True when systemd connected our output to the journal (it sets JOURNAL_STREAM)."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(verbose: bool = False) -> None:
    """Route `logging` to the journal under systemd, to stderr otherwise."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    if _journal is not None and under_systemd():
        root.addHandler(_journal.JournalHandler(SYSLOG_IDENTIFIER="flowtap"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("flowtap: %(levelname)s: %(message)s"))
        root.addHandler(handler)


def notify(**fields: str) -> bool:
    """Send sd_notify fields (READY="1", STATUS=..., WATCHDOG="1"); False when not under systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    message = "\n".join(f"{k}={v}" for k, v in fields.items())
    if _daemon is not None:
        return bool(_daemon.notify(message))
    return False


def watchdog_interval() -> float:
    """Half of systemd's WatchdogSec (from WATCHDOG_USEC), or 0 without a watchdog: how often a
    service's main loop pings WATCHDOG=1."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return 0.0
    return int(usec) / 2e6
