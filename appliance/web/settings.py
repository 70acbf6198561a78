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
    ("flows", "timeout_tcp", "TCP idle timeout", "int", ""),
    ("flows", "timeout_udp", "UDP idle timeout", "int", ""),
    ("flows", "timeout_icmp", "ICMP idle timeout", "int", ""),
    ("flows", "timeout_other", "Other idle timeout", "int", ""),
    ("flows", "status_interval", "Status interval", "int", "Status records of long sessions; 0: none."),
    ("archive", "rotate_interval", "Rotate every", "int", "UTC-aligned; 3600 = hourly."),
    ("archive", "size_cap", "Rotate at size", "int", "The open archive is closed early at this size."),
    ("archive", "quota_bytes", "Quota", "int", "0: no byte quota."),
    ("archive", "min_free_percent", "Keep free", "float", "Share of the filesystem kept free."),
    ("archive", "max_age", "Maximum age", "int", "0: keep until space is needed."),
)
# The unit the form's number is in (the input takes the plain number; the page also shows it in
# bigger units: 536870912 bytes = 512 MiB).
UNITS = {
    "flows.timeout_tcp": "seconds", "flows.timeout_udp": "seconds", "flows.timeout_icmp": "seconds",
    "flows.timeout_other": "seconds", "flows.status_interval": "seconds",
    "archive.rotate_interval": "seconds", "archive.size_cap": "bytes", "archive.quota_bytes": "bytes",
    "archive.min_free_percent": "%", "archive.max_age": "seconds",
}
BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
SPOKEN_SECONDS = (("day", 86_400), ("h", 3600), ("min", 60), ("s", 1))


def field_name(section: str, key: str) -> str:
    return f"{section}.{key}"


def binary_bytes(n: float) -> str:
    """Bytes in the biggest binary unit that keeps the number at or above 1: 512 MiB, 1.5 GiB."""
    for unit in BINARY_UNITS:
        if abs(n) < 1024 or unit == BINARY_UNITS[-1]:
            number = f"{n:,.0f}" if unit == "B" else f"{n:,.2f}".rstrip("0").rstrip(".")
            return f"{number} {unit}"
        n /= 1024
    return ""


def spoken_seconds(n: float) -> str:
    """Seconds as days, hours, minutes and seconds, largest first: 3600 → 1 h, 90 → 1 min 30 s."""
    left, parts = int(n), []
    for name, size in SPOKEN_SECONDS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count:,} {name}{'s' if name == 'day' and count != 1 else ''}")
    return " ".join(parts) or "0 s"


def in_bigger_units(value: float, unit: str) -> str:
    """The value as an operator reads it (bytes in MiB/GiB, seconds in h/min); "" when plain
    already says it (small numbers, percent)."""
    if unit == "bytes" and abs(value) >= 1024:
        return binary_bytes(value)
    if unit == "seconds" and abs(value) >= 60:
        return spoken_seconds(value)
    return ""


def as_number(raw: Any, kind: str) -> float | None:
    """A form value (typed from the file, or text as posted) as a number, or None: also for a
    number no setting could hold (infinite, or beyond 64 bits), which is refused on saving anyway."""
    if isinstance(raw, bool):
        return None
    try:
        value = raw if isinstance(raw, (int, float)) else (
            int(str(raw).strip()) if kind == "int" else float(str(raw).strip()))
    except ValueError:
        return None
    return value if abs(value) < 2**64 else None          # False for inf and NaN too


def default_value(section: str, key: str) -> Any:
    """A key's default, as the form shows it (a list as space-separated words)."""
    value = getattr(getattr(config_mod.Config(), section), key)
    return " ".join(value) if isinstance(value, tuple) else value


def plain_text(value: Any, unit: str | None) -> str:
    """A value with its unit and, where it helps, in bigger units: 536870912 bytes (512 MiB)."""
    if unit is None:
        return str(value) if value != "" else "(empty)"
    text = f"{value:g}%" if unit == "%" else f"{value:,} {unit}"
    bigger = in_bigger_units(value, unit)
    return f"{text} ({bigger})" if bigger else text


def is_changed(value: Any, default: Any, kind: str) -> bool:
    """Whether the form's value differs from the default (what an unset key would be)."""
    if kind in ("int", "float"):
        number = as_number(value, kind)
        return number is None or number != default
    if kind == "list":
        return str(value).split() != str(default).split()
    return str(value).strip() != default


def fields_shown(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every form field with its unit, the value in bigger units, its default and whether it
    differs from the default."""
    out = []
    for section, key, label, kind, help_ in FORM:
        name = field_name(section, key)
        unit, value, default = UNITS.get(name), values[name], default_value(section, key)
        number = as_number(value, kind) if kind in ("int", "float") else None
        out.append({"name": name, "label": label, "kind": kind, "help": help_, "unit": unit,
                    "value": value, "default": default,
                    "default_text": plain_text(default, unit),
                    "bigger": in_bigger_units(number, unit) if number is not None and unit else "",
                    "changed": is_changed(value, default, kind)})
    return out


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
                return render_template("config.html", fields=fields_shown(values), errors=errors,
                                       path=path), 500
            log.info("configuration saved to %s (digest %s)", path, cfg.digest())
            flash(f"Saved {path}; {reload_recorder()}.")
            return redirect(url_for("settings.index"))
    return render_template("config.html", fields=fields_shown(values), errors=errors, path=path), status
