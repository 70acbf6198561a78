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
        LOGIN_LIMIT=5,                         # failures per client address per window → 429
        LOGIN_LIMIT_GLOBAL=50,                 # failures from everyone per window → 429
        LOGIN_WINDOW=300,                      # seconds
        QUERY_TIME_LIMIT=10.0,                 # seconds for a page's query
        DOWNLOAD_TIME_LIMIT=3600.0,            # seconds for a streamed download's query
        STATUS_MAX_AGE=10.0,                   # status.json older than this: not recording
        PAGE_SIZE=50,
        STREAM_LIMIT=4,                        # live streams at once (`flowtap web` adds threads)
        STREAM_POLL=0.5,                       # seconds between a stream's looks at the archive
        STREAM_KEEPALIVE=10.0,                 # seconds of silence before a keep-alive line
    )
    app.config.update(settings or {})

    from . import alerts, archives, auth, dashboard, search, settings as settings_bp, stream, tokens
    auth.init_app(app)
    tokens.init_app(app)
    stream.init_app(app)
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
                        (429, "Too many attempts")):
        app.register_error_handler(code, _error_page(code, title))
    return app


def _error_page(code: int, title: str):
    def handler(exc):
        return render_template("error.html", code=code, title=title,
                               message=getattr(exc, "description", "")), code
    return handler
