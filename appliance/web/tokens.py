"""API tokens, made and revoked on the tokens page: "stream" tokens for the live record stream
(``flowtap ra -S``), "metrics" tokens for a scraper of /metrics and /api/status (Prometheus).

A token is 32 random bytes (``secrets.token_urlsafe``), shown once, when it is made. The page keeps
only its SHA-256, with the name the admin gave it and its scope, in ``api-tokens.json`` in the
instance directory (0600, like ``auth.json``); entries from before scopes read as "stream". A fast
hash is enough here: 32 random bytes cannot be guessed, whereas a password needs argon2 because
people choose guessable ones. Each token opens its scope's endpoints only (``auth._token_refusal``),
never a page; revoking it deletes it, and open streams it authenticated end at their next poll
(``stream.py``).

Making a token answers with a redirect (a reload of the list makes no second token); the secret
waits for the list in a one-time slot in memory, keyed by the session, never in a URL or cookie.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from flask import (Blueprint, abort, current_app, flash, redirect, render_template, request, session,
                   url_for)

from .auth import write_private

log = logging.getLogger(__name__)
bp = Blueprint("tokens", __name__)

MAX_TOKENS = 50
MAX_NAME = 64
SCOPES = {"stream": "the live record stream (flowtap ra -S)",
          "metrics": "read-only scraping of /metrics and /api/status (Prometheus)"}
SHOW_FOR = 600.0        # seconds a new token's secret waits to be shown


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def scope_of(entry: dict[str, Any]) -> str:
    """The token's scope (tokens made before scopes are stream tokens)."""
    return entry.get("scope", "stream")


class ApiTokens:
    """The API tokens of one web instance: id, name, scope, creation time and SHA-256 of each."""

    def __init__(self, instance: Path):
        self.path = instance / "api-tokens.json"
        self.lock = threading.Lock()
        doc = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.tokens: list[dict[str, Any]] = doc.get("tokens", [])

    def _save(self) -> None:
        write_private(self.path, json.dumps({"tokens": self.tokens}, indent=1))

    def create(self, name: str, scope: str = "stream") -> tuple[dict[str, Any], str]:
        """Make a token: (its entry, the secret to show once)."""
        secret = secrets.token_urlsafe(32)
        entry = {"id": secrets.token_hex(6), "name": name, "scope": scope, "created": time.time(),
                 "sha256": _digest(secret)}
        with self.lock:
            self.tokens = [*self.tokens, entry]
            self._save()
        return entry, secret

    def get(self, token_id: str) -> dict[str, Any] | None:
        return next((t for t in self.tokens if t["id"] == token_id), None)

    def revoke(self, token_id: str) -> dict[str, Any] | None:
        """Delete a token; returns its entry, or None if there is no such token."""
        with self.lock:
            entry = self.get(token_id)
            if entry is not None:
                self.tokens = [t for t in self.tokens if t is not entry]
                self._save()
        return entry

    def find(self, secret: str) -> dict[str, Any] | None:
        """The entry of the token whose secret this is, or None. Every entry is compared (in
        constant time), so the answer's timing tells nothing about which came close."""
        digest, found = _digest(secret), None
        for entry in self.tokens:
            if hmac.compare_digest(digest, entry["sha256"]):
                found = entry
        return found

    def active(self, token_id: str) -> bool:
        """False once the token has been revoked."""
        return any(t["id"] == token_id for t in self.tokens)


class OneTimeSlots:
    """A new token's secret, held for the page that shows it: taken once, per session, for
    SHOW_FOR seconds at most, and at most ``size`` of them (one per logged-in session)."""

    def __init__(self, size: int):
        self.size = size
        self.slots: collections.OrderedDict[str, tuple[float, dict[str, str]]] = collections.OrderedDict()
        self.lock = threading.Lock()

    def put(self, key: str, made: dict[str, str]) -> None:
        with self.lock:
            self.slots.pop(key, None)
            self.slots[key] = (time.monotonic(), made)
            while len(self.slots) > self.size:
                self.slots.popitem(last=False)

    def take(self, key: str) -> dict[str, str] | None:
        with self.lock:
            held = self.slots.pop(key, None)
        if held is None or time.monotonic() - held[0] > SHOW_FOR:
            return None
        return held[1]


def init_app(app) -> None:
    from .auth import MAX_SESSIONS
    app.extensions["flowtap_tokens"] = ApiTokens(Path(app.instance_path))
    app.extensions["flowtap_token_slots"] = OneTimeSlots(MAX_SESSIONS)


def store() -> ApiTokens:
    return current_app.extensions["flowtap_tokens"]


def _slots() -> OneTimeSlots:
    return current_app.extensions["flowtap_token_slots"]


def _form_error(name: str, scope: str) -> str | None:
    if not name:
        return "Give the token a name, e.g. whose laptop it is for."
    if len(name) > MAX_NAME:
        return f"The name must have at most {MAX_NAME} characters."
    if not name.isprintable():
        return "The name must be plain text."
    if scope not in SCOPES:
        return "Choose what the token is for: the stream or metrics."
    if len(store().tokens) >= MAX_TOKENS:
        return f"There are {MAX_TOKENS} tokens already: revoke one first."
    return None


@bp.route("/tokens", methods=["GET", "POST"])
def index():
    """The tokens list, with a new token's secret this once; a POST makes a token and redirects
    here."""
    error, status = None, 200
    if request.method == "POST":
        name, scope = request.form.get("name", "").strip(), request.form.get("scope", "stream")
        if (error := _form_error(name, scope)) is None:
            entry, secret = store().create(name, scope)
            _slots().put(session["sid"], {"name": name, "scope": scope, "secret": secret})
            log.info("API token %r (%s, %s) made from %s", name, entry["id"], scope, request.remote_addr)
            return redirect(url_for("tokens.index"), 303)
        status = 400
    made = _slots().take(session["sid"]) if request.method == "GET" else None
    return render_template("tokens.html", tokens=store().tokens, made=made, error=error,
                           scopes=SCOPES, scope_of=scope_of), status


@bp.route("/tokens/<token_id>/revoke", methods=["GET", "POST"])
def revoke(token_id: str):
    """GET: ask before revoking; POST: revoke the token, refused from now on, and its open streams
    end."""
    if request.method == "GET":
        entry = store().get(token_id)
        if entry is None:
            abort(404, "No such token.")
        return render_template("token_revoke.html", token=entry, scope=scope_of(entry))
    entry = store().revoke(token_id)
    if entry is None:
        abort(404, "No such token.")
    log.info("API token %r (%s) revoked from %s", entry["name"], token_id, request.remote_addr)
    flash(f"Revoked the token {entry['name']!r}; streams it opened end within a second.")
    return redirect(url_for("tokens.index"))
