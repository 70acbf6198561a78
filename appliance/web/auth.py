"""First-start setup, login, logout and the password page; sessions, CSRF tokens, API tokens at the
gate, and the rate limit."""
from __future__ import annotations

import collections
import hmac
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import (Blueprint, Flask, abort, current_app, flash, g, redirect, render_template, request,
                   session, url_for)
from flask.sessions import SecureCookieSessionInterface

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

PUBLIC = {"auth.login", "auth.setup", "dashboard.healthz", "static"}
BASIC_AUTH = {"dashboard.metrics", "dashboard.api_status"}     # scrapers may use HTTP Basic auth
TOKEN_AUTH = {"stream.stream"}        # the API: an API token (tokens.py) only, never a session
MIN_PASSWORD, MAX_PASSWORD = 10, 256
hasher = PasswordHasher()     # argon2id


def write_private(path: Path, text: str) -> None:
    """Atomically write a file only its owner can read (0600)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Credentials:
    """The admin password (argon2id hash) and the session epoch that a password change renews."""

    def __init__(self, instance: Path):
        self.path = instance / "auth.json"
        self.token_path = instance / "setup-token"
        self.lock = threading.Lock()
        doc = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.hash: str | None = doc.get("hash")
        self.epoch: str = doc.get("epoch", "")

    @property
    def configured(self) -> bool:
        return bool(self.hash)

    def setup_token(self) -> tuple[str, bool]:
        """The one-time setup token, created (0600) if there is none: (token, created)."""
        if self.token_path.exists():
            return self.token_path.read_text().strip(), False
        token = secrets.token_urlsafe(18)
        write_private(self.token_path, token + "\n")
        return token, True

    def check_token(self, token: str) -> bool:
        expected = self.token_path.read_text().strip() if self.token_path.exists() else ""
        return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())

    def verify(self, password: str) -> bool:
        if not self.hash:
            return False
        try:
            hasher.verify(self.hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return True

    def set_password(self, password: str) -> None:
        """Store a new hash and a new epoch (every other session ends); the setup token goes."""
        with self.lock:
            self.hash, self.epoch = hasher.hash(password), secrets.token_hex(16)
            write_private(self.path, json.dumps({"hash": self.hash, "epoch": self.epoch}))
            self.token_path.unlink(missing_ok=True)


class RateLimiter:
    """Failed attempts in a sliding window, per client address and over all clients."""

    def __init__(self, per_client: int, overall: int, window: float):
        self.per_client, self.overall, self.window = per_client, overall, window
        self.clients: dict[str, collections.deque[float]] = {}
        self.everyone: collections.deque[float] = collections.deque()
        self.lock = threading.Lock()

    def _trim(self, q: collections.deque[float], now: float) -> None:
        while q and q[0] <= now - self.window:
            q.popleft()

    def blocked(self, client: str) -> bool:
        now = time.monotonic()
        with self.lock:
            self._trim(self.everyone, now)
            q = self.clients.get(client, collections.deque())
            self._trim(q, now)
            return len(q) >= self.per_client or len(self.everyone) >= self.overall

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.clients.setdefault(client, collections.deque()).append(now)
            self.everyone.append(now)
            if len(self.clients) > 10_000:          # bounded memory under a spray of addresses
                self.clients = {k: v for k, v in self.clients.items() if v and v[-1] > now - self.window}


class SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is Secure whenever the request came over TLS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def init_app(app: Flask) -> None:
    """Instance files (secret key, credentials, setup token), sessions, the login and CSRF gates."""
    instance = Path(app.instance_path)
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = instance / "secret_key"
    if not key_path.exists():
        write_private(key_path, secrets.token_hex(32))
    app.secret_key = key_path.read_text().strip()
    app.session_interface = SessionInterface()
    creds = Credentials(instance)
    app.extensions["flowtap_auth"] = creds
    app.extensions["flowtap_limiter"] = RateLimiter(app.config["LOGIN_LIMIT"],
                                                    app.config["LOGIN_LIMIT_GLOBAL"],
                                                    app.config["LOGIN_WINDOW"])
    if not creds.configured:
        creds.setup_token()
        log.warning("no admin password yet: the first visitor enters the setup token from %s",
                    creds.token_path)
    app.jinja_env.globals.update(csrf_token=csrf_token, logged_in=logged_in)
    app.before_request(_gate)


def credentials() -> Credentials:
    return current_app.extensions["flowtap_auth"]


def limiter() -> RateLimiter:
    return current_app.extensions["flowtap_limiter"]


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def logged_in() -> bool:
    creds = credentials()
    return (creds.configured and session.get("user") == "admin"
            and hmac.compare_digest(str(session.get("epoch", "")), creds.epoch))


def _unblocked_client(message: str = "Too many failed attempts: wait a few minutes.") -> str:
    """The client's address, or a 429 with ``message`` when it (or everyone) failed too often."""
    client = request.remote_addr or "?"
    if limiter().blocked(client):
        abort(429, message)
    return client


def _basic_auth_ok() -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic" or auth.username != "admin":
        return False
    client = _unblocked_client("Too many failed logins: wait a few minutes.")
    if credentials().verify(auth.password or ""):
        return True
    limiter().failed(client)
    return False


def _api_refusal():
    """None when the request carries a valid API token (its entry goes to ``g.api_token``), else
    the plain-text refusal: 401 with a Bearer challenge (RFC 6750), or 429 after too many wrong
    tokens from this address. A wrong token counts in the rate limit as a wrong password does."""
    client = request.remote_addr or "?"
    if limiter().blocked(client):
        return plain_answer(429, "too many failed attempts from this address: wait a few minutes")
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return plain_answer(401, "an API token is required (make one on the sensor's API tokens "
                                 "page)", {"WWW-Authenticate": 'Bearer realm="flowtap"'})
    from .tokens import store
    g.api_token = store().find(secret.strip())
    if g.api_token is None:
        limiter().failed(client)
        log.warning("wrong API token from %s", client)
        return plain_answer(401, "the API token is not valid (wrong, or revoked)",
                            {"WWW-Authenticate": 'Bearer realm="flowtap", error="invalid_token"'})
    return None


def plain_answer(code: int, message: str, headers: dict[str, str] | None = None):
    """A one-line text answer for API clients and scrapers (the HTML error pages are for
    browsers)."""
    return message + "\n", code, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}


def _gate():
    """Every request: a POST must carry this session's CSRF token; pages need a login, the API a
    token."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        expected = session.get("csrf")
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            abort(400, "The form's security token is missing or out of date: reload the page and try again.")
    if request.endpoint in TOKEN_AUTH:
        return _api_refusal()
    if request.endpoint in PUBLIC or logged_in():
        return None
    if request.endpoint in BASIC_AUTH:
        if _basic_auth_ok():
            return None
        return plain_answer(401, "authentication required",
                            {"WWW-Authenticate": 'Basic realm="flowtap", charset="UTF-8"'})
    if not credentials().configured:
        return redirect(url_for("auth.setup"))
    return redirect(url_for("auth.login", next=request.full_path if request.method == "GET" else None))


def _safe_next(target: str | None) -> str:
    """Only local paths: no scheme, no host, no //host or \\host tricks."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return url_for("dashboard.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("dashboard.index")
    return target


def _start_session() -> None:
    session.clear()
    session.permanent = True
    session["user"] = "admin"
    session["epoch"] = credentials().epoch
    session["csrf"] = secrets.token_urlsafe(32)


def _password_error(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"The password must have at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"The password must have at most {MAX_PASSWORD} characters."
    if password != confirm:
        return "The two passwords differ."
    return None


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """First start: exchange the setup token for the admin password."""
    creds = credentials()
    if creds.configured:
        return redirect(url_for("auth.login"))
    error, status = None, 200
    if request.method == "POST":
        client = _unblocked_client()
        password, confirm = request.form.get("password", ""), request.form.get("confirm", "")
        if not creds.check_token(request.form.get("token", "").strip()):
            limiter().failed(client)
            error, status = "That is not the setup token.", 403
        elif (error := _password_error(password, confirm)) is None:
            creds.set_password(password)
            log.info("admin password set from %s; the setup token is void", client)
            _start_session()
            return redirect(url_for("dashboard.index"))
        else:
            status = 400
    return render_template("setup.html", error=error, token_path=creds.token_path), status


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Log in with the admin password (rate-limited per address and overall)."""
    if not credentials().configured:
        return redirect(url_for("auth.setup"))
    error, status = None, 200
    if request.method == "POST":
        client = _unblocked_client("Too many failed logins: wait a few minutes.")
        if credentials().verify(request.form.get("password", "")):
            _start_session()
            return redirect(_safe_next(request.form.get("next")))
        limiter().failed(client)
        log.warning("failed login from %s", client)
        error, status = "Wrong password.", 403
    return render_template("login.html", error=error, next=request.values.get("next", "")), status


@bp.route("/logout", methods=["POST"])
def logout():
    """End the session."""
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/password", methods=["GET", "POST"])
def password():
    """Change the admin password (every other session ends)."""
    error, status = None, 200
    if request.method == "POST":
        client = _unblocked_client()
        new, confirm = request.form.get("new", ""), request.form.get("confirm", "")
        if not credentials().verify(request.form.get("current", "")):
            limiter().failed(client)
            error, status = "The current password is wrong.", 403
        elif (error := _password_error(new, confirm)) is None:
            credentials().set_password(new)
            _start_session()
            flash("Password changed; other sessions have been logged out.")
            return redirect(url_for("dashboard.index"))
        else:
            status = 400
    return render_template("password.html", error=error), status
