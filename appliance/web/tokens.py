"""API tokens for the live record stream (``flowtap ra -S``): made and revoked on the tokens page.

A token is 32 random bytes (``secrets.token_urlsafe``), shown once, when it is made. The page keeps
only its SHA-256, with the name the admin gave it, in ``api-tokens.json`` in the instance directory
(0600, like ``auth.json``). A fast hash is enough here: 32 random bytes cannot be guessed, whereas
a password needs argon2 because people choose guessable ones. A token opens the API only
(``auth.TOKEN_AUTH``), never a page; revoking it deletes it, and open streams it authenticated end
at their next poll (``stream.py``).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from .auth import write_private

log = logging.getLogger(__name__)
bp = Blueprint("tokens", __name__)

MAX_TOKENS = 50
MAX_NAME = 64


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class ApiTokens:
    """The API tokens of one web instance: id, name, creation time and SHA-256 of each."""

    def __init__(self, instance: Path):
        self.path = instance / "api-tokens.json"
        self.lock = threading.Lock()
        doc = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.tokens: list[dict[str, Any]] = doc.get("tokens", [])

    def _save(self) -> None:
        write_private(self.path, json.dumps({"tokens": self.tokens}, indent=1))

    def create(self, name: str) -> tuple[dict[str, Any], str]:
        """Make a token: (its entry, the secret to show once)."""
        secret = secrets.token_urlsafe(32)
        entry = {"id": secrets.token_hex(6), "name": name, "created": time.time(),
                 "sha256": _digest(secret)}
        with self.lock:
            self.tokens = [*self.tokens, entry]
            self._save()
        return entry, secret

    def revoke(self, token_id: str) -> dict[str, Any] | None:
        """Delete a token; returns its entry, or None if there is no such token."""
        with self.lock:
            entry = next((t for t in self.tokens if t["id"] == token_id), None)
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


def init_app(app) -> None:
    app.extensions["flowtap_tokens"] = ApiTokens(Path(app.instance_path))


def store() -> ApiTokens:
    return current_app.extensions["flowtap_tokens"]


def _name_error(name: str) -> str | None:
    if not name:
        return "Give the token a name, e.g. whose laptop it is for."
    if len(name) > MAX_NAME:
        return f"The name must have at most {MAX_NAME} characters."
    if not name.isprintable():
        return "The name must be plain text."
    if len(store().tokens) >= MAX_TOKENS:
        return f"There are {MAX_TOKENS} tokens already: revoke one first."
    return None


@bp.route("/tokens", methods=["GET", "POST"])
def index():
    """The tokens list; a POST makes a token and shows its secret, this once."""
    error, status, made = None, 200, None
    if request.method == "POST":
        name = request.form.get("name", "").strip()
        if (error := _name_error(name)) is None:
            entry, secret = store().create(name)
            made = {"name": entry["name"], "secret": secret}
            log.info("API token %r (%s) made from %s", name, entry["id"], request.remote_addr)
        else:
            status = 400
    return render_template("tokens.html", tokens=store().tokens, made=made, error=error), status


@bp.route("/tokens/<token_id>/revoke", methods=["POST"])
def revoke(token_id: str):
    """Revoke a token: refused from now on, and its open streams end."""
    entry = store().revoke(token_id)
    if entry is None:
        abort(404, "No such token.")
    log.info("API token %r (%s) revoked from %s", entry["name"], token_id, request.remote_addr)
    flash(f"Revoked the token {entry['name']!r}; streams it opened end within a second.")
    return redirect(url_for("tokens.index"))
