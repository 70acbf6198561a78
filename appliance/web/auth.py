"""First-start setup, login, logout and the password page; sessions, CSRF tokens, API tokens at the
gate, the per-client rate limit and the argon2 throttle.

Sessions are server-side: the signed cookie carries a random session id, and ``sessions.json`` in
the instance directory (0600) keeps the SHA-256 of each live one with its login time. Logging out
deletes it, so a copied cookie dies with it; a session ends SESSION_ABSOLUTE_LIFETIME seconds after
its login however busy it is (the dashboard's polling renews only the cookie); a password change
ends every other one.

Failed logins (and wrong API tokens) are counted per client: an IPv4 address or an IPv6 /64. Only
that client is refused (429), so nobody can lock the admin out by failing from many addresses.
What a flood from many addresses could exhaust instead is CPU and memory for argon2 (64 MiB
each), so at most ARGON2_CONCURRENCY verifications run at once and the others wait their turn,
first come first served: a correct password waits behind a flood but is verified. A valid API
token is a SHA-256 lookup, never throttled.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import (Blueprint, Flask, abort, current_app, flash, g, redirect, render_template, request,
                   session, url_for)
from flask.sessions import SecureCookieSessionInterface

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

PUBLIC = {"auth.login", "auth.setup", "dashboard.healthz", "static"}
SCRAPE = {"dashboard.metrics", "dashboard.api_status"}   # a "metrics" API token, or HTTP Basic
TOKEN_AUTH = {"stream.stream"}        # the API: a "stream" API token (tokens.py) only, never a session
MIN_PASSWORD, MAX_PASSWORD = 10, 256
MIN_DISTINCT = 5                      # different characters a password needs
MAX_SESSIONS = 32                     # logged-in sessions kept; a new login beyond ends the oldest
MAX_CLIENTS = 10_000                  # clients the rate limit remembers
COMMON_PASSWORDS = Path(__file__).with_name("common_passwords.txt")
# Typing runs that are no secret: alphabet, digits, keyboard rows and columns.
SEQUENCES = ("abcdefghijklmnopqrstuvwxyz", "01234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm",
             "qwertzuiop", "azertyuiop", "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
             "qazwsxedcrfvtgbyhnujmikolp", "!@#$%^&*()")
BUSY = "The sensor is busy checking other logins: try again in a minute."
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


class Busy(Exception):
    """No turn at argon2 came in time (a flood of logins): answered with 503, never counted as a
    failure."""


class Argon2Gate:
    """At most ``slots`` argon2 runs at once; up to ``queue`` more wait, first come first served,
    ``wait`` seconds at most. Beyond that :class:`Busy`, which is the truth: the sensor is busy,
    not this client refused."""

    def __init__(self, slots: int, queue: int, wait: float):
        self.slots, self.queue, self.wait = slots, queue, wait
        self.running = 0
        self.waiting: collections.deque[threading.Event] = collections.deque()
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def turn(self):
        """Run the block in a turn; raises Busy if none comes."""
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _acquire(self) -> None:
        with self.lock:
            if self.running < self.slots and not self.waiting:
                self.running += 1
                return
            if len(self.waiting) >= self.queue:
                raise Busy()
            called = threading.Event()
            self.waiting.append(called)
        if called.wait(self.wait):
            return
        with self.lock:
            if called.is_set():         # handed a turn just as the wait ran out
                return
            self.waiting.remove(called)
        raise Busy()

    def _release(self) -> None:
        with self.lock:
            if self.waiting:            # hand the turn straight on, so no newcomer jumps the queue
                self.waiting.popleft().set()
            else:
                self.running -= 1


class Credentials:
    """The admin password (argon2id hash) and the session epoch that a password change renews."""

    def __init__(self, instance: Path, gate: Argon2Gate):
        self.path = instance / "auth.json"
        self.token_path = instance / "setup-token"
        self.gate = gate
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
        """Whether this is the admin password, in a turn at the argon2 gate (raises Busy)."""
        if not self.hash:
            return False
        with self.gate.turn():
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


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class Sessions:
    """The logged-in sessions: the SHA-256 of each session id with its login time, in
    ``sessions.json`` (0600). At most MAX_SESSIONS; each lives ``lifetime`` seconds from its login.
    """

    def __init__(self, instance: Path, lifetime: float):
        self.path = instance / "sessions.json"
        self.lifetime = lifetime
        self.lock = threading.Lock()
        doc = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.started: dict[str, float] = doc.get("sessions", {})

    def _save(self) -> None:
        write_private(self.path, json.dumps({"sessions": self.started}))

    def _live(self, started: float, now: float) -> bool:
        return 0 <= now - started < self.lifetime       # a clock set back ends sessions too

    def start(self) -> tuple[str, float]:
        """A new session: (its id for the cookie, its login time). The oldest beyond MAX_SESSIONS
        and the expired ones end."""
        sid, now = secrets.token_urlsafe(32), time.time()
        with self.lock:
            live = sorted((t, d) for d, t in self.started.items() if self._live(t, now))
            live = live[-(MAX_SESSIONS - 1):] if MAX_SESSIONS > 1 else []
            self.started = {d: t for t, d in live}
            self.started[_digest(sid)] = now
            self._save()
        return sid, now

    def valid(self, sid: str) -> bool:
        started = self.started.get(_digest(sid))
        return started is not None and self._live(started, time.time())

    def end(self, sid: str) -> None:
        with self.lock:
            if self.started.pop(_digest(sid), None) is not None:
                self._save()

    def end_all(self) -> None:
        with self.lock:
            self.started = {}
            self._save()


def client_key(address: str | None) -> str:
    """Who the rate limit counts as one client: an IPv4 address, or an IPv6 /64 (one host
    usually has a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return (address or "?")[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
    return str(ip)


def _client_words(client: str) -> str:
    return "this network (/64)" if client.endswith("/64") else "this address"


class RateLimiter:
    """Failed attempts per client (:func:`client_key`) in a sliding window. There is no limit over
    all clients: it would let anyone lock the admin out (the argon2 gate bounds the work instead).
    Memory is bounded: beyond ``max_clients`` the client whose last failure is oldest is forgotten.
    """

    def __init__(self, per_client: int, window: float, max_clients: int = MAX_CLIENTS):
        self.per_client, self.window, self.max_clients = per_client, window, max_clients
        self.clients: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self.lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        now = time.monotonic()
        with self.lock:
            q = self.clients.get(client)
            while q and q[0] <= now - self.window:
                q.popleft()
            return q is not None and len(q) >= self.per_client

    def failed(self, client: str) -> None:
        with self.lock:
            q = self.clients.pop(client, None) or collections.deque(maxlen=max(1, self.per_client))
            q.append(time.monotonic())
            self.clients[client] = q                # the most recent failure last
            while len(self.clients) > self.max_clients:
                self.clients.popitem(last=False)


class SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is Secure whenever the request came over TLS, and whose
    cookie expires with the session's absolute lifetime at the latest."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)

    def get_expiration_time(self, app: Flask, session) -> datetime | None:
        expires = super().get_expiration_time(app, session)
        login = session.get("login")
        if expires is None or not isinstance(login, (int, float)):
            return expires
        end = datetime.fromtimestamp(login + app.config["SESSION_ABSOLUTE_LIFETIME"], timezone.utc)
        return min(expires, end)


def init_app(app: Flask) -> None:
    """Instance files (secret key, credentials, setup token, sessions), the login and CSRF gates."""
    instance = Path(app.instance_path)
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = instance / "secret_key"
    if not key_path.exists():
        write_private(key_path, secrets.token_hex(32))
    app.secret_key = key_path.read_text().strip()
    app.session_interface = SessionInterface()
    gate = Argon2Gate(app.config["ARGON2_CONCURRENCY"], app.config["ARGON2_QUEUE"],
                      app.config["ARGON2_WAIT"])
    creds = Credentials(instance, gate)
    app.extensions["flowtap_auth"] = creds
    app.extensions["flowtap_sessions"] = Sessions(instance, app.config["SESSION_ABSOLUTE_LIFETIME"])
    app.extensions["flowtap_limiter"] = RateLimiter(app.config["LOGIN_LIMIT"], app.config["LOGIN_WINDOW"])
    if not creds.configured:
        creds.setup_token()
        log.warning("no admin password yet: the first visitor enters the setup token from %s",
                    creds.token_path)
    app.jinja_env.globals.update(csrf_token=csrf_token, logged_in=logged_in)
    app.before_request(_gate)
    app.register_error_handler(Busy, _busy_page)


def credentials() -> Credentials:
    return current_app.extensions["flowtap_auth"]


def sessions() -> Sessions:
    return current_app.extensions["flowtap_sessions"]


def limiter() -> RateLimiter:
    return current_app.extensions["flowtap_limiter"]


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def logged_in() -> bool:
    """An admin session of the current password that is still in the server's list."""
    creds = credentials()
    return (creds.configured and session.get("user") == "admin"
            and hmac.compare_digest(str(session.get("epoch", "")), creds.epoch)
            and sessions().valid(str(session.get("sid", ""))))


def _busy_page(_exc: Busy):
    return (render_template("error.html", code=503, title="Busy", message=BUSY), 503,
            {"Retry-After": "60"})


def _unblocked_client() -> str:
    """The client (:func:`client_key`), or a 429 when it failed too often."""
    client = client_key(request.remote_addr)
    if limiter().blocked(client):
        abort(429, f"Too many failed attempts from {_client_words(client)}: wait a few minutes.")
    return client


def plain_answer(code: int, message: str, headers: dict[str, str] | None = None):
    """A one-line text answer for API clients and scrapers (the HTML error pages are for
    browsers)."""
    return message + "\n", code, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}


def _too_many(client: str):
    return plain_answer(429, f"too many failed attempts from {_client_words(client)}: wait a few "
                             "minutes", {"Retry-After": str(int(current_app.config["LOGIN_WINDOW"]))})


def _bearer() -> str | None:
    """The secret of an ``Authorization: Bearer`` header, if there is one."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def _token_refusal(scope: str, secret: str | None):
    """None when ``secret`` is a valid API token of ``scope`` (its entry goes to ``g.api_token``),
    else the plain-text refusal: 401 (RFC 6750), 403 for a token of another scope, 429 after too
    many wrong tokens from this client. A valid token is always accepted: it is a cheap lookup and
    cannot be guessed, so the rate limit only meters wrong ones."""
    if secret is None:
        return plain_answer(401, "an API token is required (make one on the sensor's API tokens "
                                 "page)", {"WWW-Authenticate": 'Bearer realm="flowtap"'})
    from .tokens import scope_of, store
    entry = store().find(secret)
    if entry is not None and scope_of(entry) == scope:
        g.api_token = entry
        return None
    if entry is not None:
        return plain_answer(403, f"this API token is for {scope_of(entry)} only, not {scope}",
                            {"WWW-Authenticate": 'Bearer realm="flowtap", error="insufficient_scope"'})
    client = client_key(request.remote_addr)
    if limiter().blocked(client):
        return _too_many(client)
    limiter().failed(client)
    log.warning("wrong API token from %s", request.remote_addr)
    return plain_answer(401, "the API token is not valid (wrong, or revoked)",
                        {"WWW-Authenticate": 'Bearer realm="flowtap", error="invalid_token"'})


def _scrape_refusal():
    """None for a "metrics" API token or the admin password by HTTP Basic (kept for scrapers set
    up before the tokens), else the plain-text refusal."""
    secret = _bearer()
    if secret is not None:
        return _token_refusal("metrics", secret)
    auth = request.authorization
    if auth is not None and auth.type == "basic" and auth.username == "admin":
        client = client_key(request.remote_addr)
        if limiter().blocked(client):
            return _too_many(client)
        try:
            if credentials().verify(auth.password or ""):
                return None
        except Busy:
            return plain_answer(503, "busy checking other logins: try again later", {"Retry-After": "60"})
        limiter().failed(client)
    return plain_answer(401, "authentication required (a metrics API token, or the admin password)",
                        {"WWW-Authenticate": 'Basic realm="flowtap", charset="UTF-8"'})


def _gate():
    """Every request: a POST must carry this session's CSRF token; pages need a login, the API a
    token."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        expected = session.get("csrf")
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            abort(400, "The form's security token is missing or out of date: reload the page and try again.")
    if request.endpoint in TOKEN_AUTH:
        return _token_refusal("stream", _bearer())
    if request.endpoint in PUBLIC or logged_in():
        return None
    if request.endpoint in SCRAPE:
        return _scrape_refusal()
    if not credentials().configured:
        return redirect(url_for("auth.setup"))
    return redirect(url_for("auth.login", next=request.full_path if request.method == "GET" else None))


def _safe_next(target: str | None) -> str:
    """Only local paths: no scheme, no host, no //host or \\host tricks, no control characters
    (a CR/LF would split the Location header; browsers drop tabs and newlines from URLs)."""
    home = url_for("dashboard.index")
    if (not target or not target.startswith("/") or "\\" in target
            or any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in target)):
        return home
    target = quote(target, safe="/?&=%:@!$'()*+,;~#[]-._")    # spaces and non-ASCII, escaped
    parts = urlsplit(target)
    if target.startswith("//") or parts.scheme or parts.netloc:
        return home
    return target


def _start_session() -> None:
    """A new session (a new id: none chosen before the login survives it)."""
    sid, login_time = sessions().start()
    session.clear()
    session.permanent = True
    session["user"] = "admin"
    session["epoch"] = credentials().epoch
    session["sid"] = sid
    session["login"] = login_time
    session["csrf"] = secrets.token_urlsafe(32)


def _common_passwords() -> frozenset[str]:
    """The common passwords list (read once). Missing, it is logged: the other checks still hold,
    and the first start must not fail for want of it."""
    if "flowtap_common_passwords" not in current_app.extensions:
        try:
            lines = COMMON_PASSWORDS.read_text().splitlines()
        except OSError as e:
            log.error("no common passwords list (%s): passwords are checked without it", e)
            lines = []
        current_app.extensions["flowtap_common_passwords"] = frozenset(
            w.strip().lower() for w in lines if w.strip() and not w.startswith("#"))
    return current_app.extensions["flowtap_common_passwords"]


def _weakness(password: str) -> str | None:
    """Why the password is easy to guess, or None: too few different characters, a repeated
    piece, a typing run, or a common password (give or take digits and symbols around it)."""
    lower = password.lower()
    if len(set(lower)) < MIN_DISTINCT:
        return f"it needs at least {MIN_DISTINCT} different characters"
    if (lower + lower).find(lower, 1) < len(lower):
        return "it repeats one piece"
    if any(lower in run or lower in run[::-1] for run in SEQUENCES):
        return "it is a run of keys"
    core = lower.strip("0123456789!@#$%^&*()-_=+.,;:?'\" ")    # Password2024! -> password
    if lower in _common_passwords() or core in _common_passwords():
        return "it is a common password"
    if len(core) >= 4 and any(core in run or core in run[::-1] for run in SEQUENCES):
        return "it is a run of keys"
    return None


def _password_error(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"The password must have at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"The password must have at most {MAX_PASSWORD} characters."
    if password != confirm:
        return "The two passwords differ."
    if (why := _weakness(password)) is not None:
        return f"That password is too easy to guess: {why}. A few unrelated words make a good one."
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
            log.info("admin password set from %s; the setup token is void", request.remote_addr)
            _start_session()
            return redirect(url_for("dashboard.index"))
        else:
            status = 400
    return render_template("setup.html", error=error, token_path=creds.token_path), status


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Log in with the admin password (rate-limited per client, argon2 throttled)."""
    if not credentials().configured:
        return redirect(url_for("auth.setup"))
    error, status = None, 200
    if request.method == "POST":
        client = _unblocked_client()
        if credentials().verify(request.form.get("password", "")):
            _start_session()
            return redirect(_safe_next(request.form.get("next")))
        limiter().failed(client)
        log.warning("failed login from %s", request.remote_addr)
        error, status = "Wrong password.", 403
    return render_template("login.html", error=error, next=request.values.get("next", "")), status


@bp.route("/logout", methods=["POST"])
def logout():
    """End the session, on the server too: a copy of its cookie opens nothing any more."""
    sessions().end(str(session.get("sid", "")))
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
            sessions().end_all()
            _start_session()
            flash("Password changed; other sessions have been logged out.")
            return redirect(url_for("dashboard.index"))
        else:
            status = 400
    return render_template("password.html", error=error), status
