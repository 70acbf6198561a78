"""The configuration page: a validated form over the TOML file; saving writes it atomically and
makes the recorder reload (``systemctl reload`` under systemd, else SIGHUP to its pid)."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from .. import config as config_mod
from . import dashboard

log = logging.getLogger(__name__)
bp = Blueprint("settings", __name__)

# (section, key, label, kind, help) for every key the form edits; others in the file are kept.
FORM = (
    ("sensor", "id", "Sensor id", "str", "Recorded in every session record (Argus SrcId)."),
    ("capture", "interfaces", "Interfaces", "list", "Space-separated, e.g. br0 (restart to apply)."),
    ("capture", "bpf", "BPF filter", "str", "Kernel filter, tcpdump syntax; empty: everything."),
    ("flows", "timeout_tcp", "TCP idle timeout (s)", "int", ""),
    ("flows", "timeout_udp", "UDP idle timeout (s)", "int", ""),
    ("flows", "timeout_icmp", "ICMP idle timeout (s)", "int", ""),
    ("flows", "timeout_other", "Other idle timeout (s)", "int", ""),
    ("flows", "status_interval", "Status interval (s)", "int", "Status records of long sessions; 0: none."),
    ("archive", "rotate_interval", "Rotate every (s)", "int", "UTC-aligned; 3600 = hourly."),
    ("archive", "size_cap", "Rotate at size (bytes)", "int", ""),
    ("archive", "quota_bytes", "Quota (bytes)", "int", "0: no byte quota."),
    ("archive", "min_free_percent", "Keep free (% of the filesystem)", "float", ""),
    ("archive", "max_age", "Maximum age (s)", "int", "0: keep until space is needed."),
)


def field_name(section: str, key: str) -> str:
    return f"{section}.{key}"


def toml_value(value: Any) -> str:
    """One TOML value: a string, integer, float, boolean or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; DEL must be escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """The flat two-level TOML this config uses: one [section] of key = value lines each."""
    out = ["# flowtap configuration (written by the admin web page)"]
    for section, values in data.items():
        out.append(f"\n[{section}]")
        out += [f"{key} = {toml_value(v)}" for key, v in values.items()]
    return "\n".join(out) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside path, fsync it, rename it over path, fsync the directory."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def read_file(path: Path) -> dict[str, Any]:
    """The config file as parsed TOML ({} when it does not exist)."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}


def parse_form(form: Any, base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's data with the form's values in place, and errors by field name."""
    data = {section: dict(values) for section, values in base.items()}
    errors: dict[str, str] = {}
    for section, key, _label, kind, _help in FORM:
        name = field_name(section, key)
        raw = form.get(name)
        if raw is None:
            errors[name] = f"{name}: missing"
            continue
        raw = raw.strip()
        try:
            value: Any = (raw.split() if kind == "list" else int(raw) if kind == "int"
                          else float(raw) if kind == "float" else raw)
        except ValueError:
            errors[name] = f"{name}: must be {'a whole number' if kind == 'int' else 'a number'}, got {raw!r}"
            continue
        data.setdefault(section, {})[key] = value
    return data, errors


def check(data: dict[str, Any]) -> tuple[config_mod.Config | None, dict[str, str]]:
    """Validate the whole config (the config module's rules) and compile the BPF filter."""
    try:
        cfg = config_mod.from_dict(data)
    except config_mod.ConfigError as e:
        name = str(e).partition(":")[0]
        return None, {name: str(e)}
    from ..capture import check_bpf       # the native module loads only when a form is saved
    if cfg.capture.bpf and (err := check_bpf(cfg.capture.bpf)):
        return None, {"capture.bpf": f"capture.bpf: {err}"}
    return cfg, {}


def reload_recorder() -> str:
    """Ask the recorder to reload its configuration; returns what was done."""
    if os.environ.get("INVOCATION_ID") and shutil.which("systemctl"):
        proc = subprocess.run(["systemctl", "reload", "flowtap-recorder"], capture_output=True,
                              text=True, timeout=30)
        if proc.returncode == 0:
            return "the recorder was reloaded (systemctl reload flowtap-recorder)"
        log.warning("systemctl reload flowtap-recorder failed: %s", proc.stderr.strip())
    status = dashboard.read_status()
    pid = (status or {}).get("pid")
    if not isinstance(pid, int) or pid <= 1 or not (status or {}).get("fresh"):
        return "the recorder is not running: the new configuration applies when it starts"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if b"flowtap" not in cmdline and b"appliance" not in cmdline:
        return f"process {pid} is not the recorder: the new configuration applies when it starts"
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        return f"could not signal the recorder ({e.strerror}): restart it to apply"
    return f"the recorder (pid {pid}) was asked to reload"


@bp.route("/config", methods=["GET", "POST"])
def index():
    """Show the form; on save validate every field, write the TOML atomically and reload."""
    path = Path(current_app.config["CONFIG_PATH"])
    errors: dict[str, str] = {}
    try:
        base = read_file(path)
        current = config_mod.from_dict(base)
    except (tomllib.TOMLDecodeError, config_mod.ConfigError, OSError) as e:
        base, current = {}, config_mod.Config()
        errors["file"] = f"{path}: {e} (the form shows the defaults)"
    values = {field_name(s, k): getattr(getattr(current, s), k) for s, k, *_ in FORM}
    values = {k: " ".join(v) if isinstance(v, tuple) else v for k, v in values.items()}
    status = 200
    if request.method == "POST":
        data, errors = parse_form(request.form, base)
        values.update({k: request.form.get(k, "") for k in values})
        if not errors:
            cfg, errors = check(data)
        if errors:
            status = 400
        else:
            try:
                write_atomically(path, to_toml(data))
            except OSError as e:
                errors["file"] = f"{path}: cannot write: {e.strerror or e}"
                return render_template("config.html", form=FORM, values=values, errors=errors,
                                       path=path), 500
            log.info("configuration saved to %s (digest %s)", path, cfg.digest())
            flash(f"Saved {path}; {reload_recorder()}.")
            return redirect(url_for("settings.index"))
    return render_template("config.html", form=FORM, values=values, errors=errors, path=path), status
