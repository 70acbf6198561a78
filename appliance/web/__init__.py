"""The admin web page: ``create_app`` (the Flask application factory) and what every page shares.

One blueprint per area: ``auth`` (setup, login, password), ``dashboard`` (status, live sessions,
/metrics, /healthz, /api/status), ``search``, ``alerts`` (IDS alerts and the sessions they fired
on), ``archives``, ``settings`` (the config form),
``tokens`` (API tokens) and ``stream`` (the live record stream of ``flowtap ra -S``).
Everything it reads it opens read-only; the only files it writes are its own under the instance
path (secret key, setup token, password hash, API token hashes) and the config file when the form
is saved.

Example::

    app = create_app(config_path="/etc/flowtap/flowtap.toml")
    waitress.serve(app, listen="127.0.0.1:8080")
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, g, render_template, request

from .. import config as config_mod
from ..config import Config

DEFAULT_RUNTIME_DIR = "/run/flowtap"
API_PREFIX = "/api/"
INTERNAL_ERROR = "Something went wrong on the sensor: the journal of flowtap-web has the details."
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(config: Config | None = None, config_path: str | os.PathLike[str] | None = None,
               data_dir: str | None = None, runtime_dir: str | None = None,
               settings: dict[str, Any] | None = None) -> Flask:
    """Build the app.

    :param config: the configuration (default: loaded from ``config_path``).
    :param config_path: the TOML file the config page edits (default /etc/flowtap/flowtap.toml).
    :param data_dir: archives are under DATA_DIR/archive, the web's own files under DATA_DIR/web.
    :param runtime_dir: where the recorder writes status.json (default /run/flowtap).
    :param settings: Flask settings to override (tests: limits, TESTING).
    :raises ConfigError: when the config file is invalid.
    """
    config_path = Path(config_path) if config_path is not None else config_mod.DEFAULT_PATH
    if config is None:      # a missing file means the defaults: the config page creates it
        config = config_mod.load(config_path) if config_path.exists() else Config()
    if data_dir is not None:
        config = config_mod.override(config, data_dir=data_dir)
    archive_dir = Path(config.archive.dir)
    instance = Path(data_dir) / "web" if data_dir else archive_dir.parent / "web"
    app = Flask(__name__, instance_path=str(instance.resolve()))
    app.config.update(
        FLOWTAP=config,
        CONFIG_PATH=str(config_path),
        ARCHIVE_DIR=str(archive_dir),
        RUNTIME_DIR=runtime_dir or os.environ.get("FLOWTAP_RUNTIME_DIR", DEFAULT_RUNTIME_DIR),
        MAX_CONTENT_LENGTH=64 * 1024,          # forms are small; anything bigger is refused (413)
        MAX_FORM_MEMORY_SIZE=64 * 1024,
        SESSION_COOKIE_NAME="flowtap_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=False,           # True forces Secure; over TLS it is set anyway
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        SESSION_ABSOLUTE_LIFETIME=12 * 3600,   # seconds from login; requests never extend it
        LOGIN_LIMIT=5,                         # failures per client (address, IPv6 /64) per window → 429
        LOGIN_WINDOW=300,                      # seconds
        ARGON2_CONCURRENCY=2,                  # password checks at once (64 MiB and a core each)
        ARGON2_QUEUE=16,                       # more wait their turn; beyond that: 503 busy
        ARGON2_WAIT=20.0,                      # seconds a password check waits for its turn
        QUERY_TIME_LIMIT=10.0,                 # seconds for a page's query
        DOWNLOAD_TIME_LIMIT=3600.0,            # seconds for a streamed download's query
        STATUS_MAX_AGE=10.0,                   # status.json older than this: not recording
        PAGE_SIZE=50,
        STREAM_LIMIT=4,                        # live streams at once (`flowtap web` adds threads)
        DOWNLOAD_LIMIT=2,                      # downloads at once (a thread each, as streams)
        WRITE_TIMEOUT=60.0,                    # seconds a client may leave sent data unread
        STREAM_POLL=0.5,                       # seconds between a stream's looks at the archive
        STREAM_KEEPALIVE=10.0,                 # seconds of silence before a keep-alive line
    )
    app.config.update(settings or {})

    from . import alerts, archives, auth, dashboard, limits, search, settings as settings_bp, stream, tokens
    auth.init_app(app)
    tokens.init_app(app)
    limits.init_app(app)
    for bp in (auth.bp, dashboard.bp, search.bp, alerts.bp, archives.bp, settings_bp.bp, tokens.bp,
               stream.bp):
        app.register_blueprint(bp)

    @app.after_request
    def security_headers(resp):
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.teardown_appcontext
    def close_archives(_exc):
        for conn in g.pop("archives", {}).values():
            conn.close()

    for code, title in ((400, "Bad request"), (403, "Forbidden"), (404, "Not found"),
                        (405, "Method not allowed"), (413, "Request too large"),
                        (429, "Too many attempts"), (500, "Internal error"),
                        (503, "Service unavailable")):
        app.register_error_handler(code, _error_page(code, title))
    return app


def _error_page(code: int, title: str):
    """The styled error page for ``code``, or on the API (``/api/``) a one-line text answer, which
    ``flowtap ra -S`` prints as it is. A 500 (an exception no view handled, logged with its
    traceback) says only where to look."""
    from .auth import plain_answer

    def handler(exc):
        message = INTERNAL_ERROR if code == 500 else getattr(exc, "description", "") or title
        headers = {k: v for k, v in exc.get_headers() if k == "Retry-After"}
        if request.path.startswith(API_PREFIX):
            return plain_answer(code, " ".join(str(message).split()), headers)
        return render_template("error.html", code=code, title=title, message=message), code, headers
    return handler
