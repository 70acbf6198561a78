"""Soak: the real recorder on a namespace bridge under steady traffic for a long time.

Builds the lab of ``appliance.netlab`` (h1 ── br0 in tap ── h2), runs ``flowtap record -i br0`` in
the tap namespace with archives rotating every minute and a byte quota that keeps about ten of
them, and drives steady traffic through the bridge:

- the demo roles (``python -m appliance.demo server`` in h2, ``client`` in h1), human-paced;
- a load generator in h1 (``soak.py --role load``): TCP request/response sessions to the demo
  server, UDP request/response sessions (each from its own chosen source port) to the demo DNS
  role, and one constant-rate UDP stream to a sink in h2 (``soak.py --role sink``). It logs every
  session it made (start time, protocol, ports) so the archives can be checked against it.

Every 10 s it samples the recorder's RSS (/proc/PID/status), open file descriptors (/proc/PID/fd)
and CPU time. At the end it stops the generator, lets the last packets arrive, stops the recorder
with SIGTERM and checks: every session that started inside the retained window (from the opening
of the oldest archive retention kept to the stop) has a record; RSS and fds flat (after warm-up
vs end, and the maximum). The result goes into the "Soak" section of bench/RESULTS.md.

Needs root (namespaces). Sends traffic only between the namespaces it creates.

Example::

    nohup .venv/bin/python bench/soak.py --minutes 30 > bench/out/soak.log 2>&1 &
    .venv/bin/python bench/soak.py --minutes 1 --no-results     # a quick check of the script
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import platform
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "RESULTS.md"
MARK_BEGIN, MARK_END = "<!-- bench:soak -->", "<!-- /bench:soak -->"
HTTP_PORT, DNS_PORT, SINK_PORT, STREAM_SPORT = 8080, 5353, 7001, 7000
UDP_PORTS = (1024, 32767)         # below the ephemeral range: no clash with the kernel's choices
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- roles that run inside a namespace ------------------------------------------------------------

def role_sink() -> None:
    """h2: swallow the UDP stream (so no ICMP port-unreachable goes back) until SIGTERM."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", SINK_PORT))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        s.recv(2048)


def role_load(server: str, log_path: str, tcp_rate: float, udp_rate: float, stream_pps: float,
              seconds: float) -> None:
    """h1: sessions at fixed rates and one UDP stream, for `seconds` or until SIGTERM.

    Log lines: ``T PROTO SPORT DPORT OK`` per session (T = Unix time the session started),
    ``# stream PACKETS`` at the end.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log = open(log_path, "w", buffering=1 << 16)
    lock = threading.Lock()

    def note(t: float, proto: int, sport: int, dport: int, ok: bool) -> None:
        with lock:
            log.write(f"{t:.6f} {proto} {sport} {dport} {int(ok)}\n")

    def paced(rate: float, work) -> None:
        start = time.monotonic()
        n = 0
        while not stop.is_set() and time.monotonic() - start < seconds:
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                stop.wait(delay)
                continue
            work(n)
            n += 1

    def tcp_session(_n: int) -> None:
        t = time.time()
        sport, ok = 0, False
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect((server, HTTP_PORT))
                sport = s.getsockname()[1]
                s.sendall(b"GET /512 HTTP/1.0\r\n\r\n")
                while s.recv(65536):
                    pass
                ok = True
        except OSError:
            pass
        if sport:
            note(t, 6, sport, HTTP_PORT, ok)

    ports = [p for p in range(*UDP_PORTS) if p not in (STREAM_SPORT, SINK_PORT, DNS_PORT)]
    random.Random(1).shuffle(ports)

    def udp_session(n: int) -> None:
        sport = ports[n % len(ports)]
        t = time.time()
        sent = ok = False
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", sport))
                s.settimeout(1)
                s.sendto((n % 65536).to_bytes(2, "big") + b"\x01\x00\x00\x01" + b"\x00" * 6 + b"\x04soak\x00\x00\x01\x00\x01",
                         (server, DNS_PORT))
                sent = True
                s.recvfrom(2048)
                ok = True
        except OSError:
            pass
        if sent:                       # a request that left h1 is a session the bridge saw
            note(t, 17, sport, DNS_PORT, ok)

    sent = [0]
    stream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stream.bind(("0.0.0.0", STREAM_SPORT))
    payload = b"s" * 100

    def stream_packet(_n: int) -> None:
        stream.sendto(payload, (server, SINK_PORT))
        sent[0] += 1

    threads = [threading.Thread(target=paced, args=(r, w), daemon=True)
               for r, w in ((tcp_rate, tcp_session), (udp_rate, udp_session), (stream_pps, stream_packet))
               if r > 0]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with lock:
        log.write(f"# stream {sent[0]}\n")
        log.close()


# -- the driver (root namespace) ------------------------------------------------------------------

def proc_sample(pid: int) -> dict[str, float]:
    """RSS (KiB), open fds and CPU seconds of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return {"rss_kib": rss, "fds": fds, "cpu_s": cpu}


def toml(config: dict) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def quiet(lab) -> None:
    """Static neighbours and no IPv6 chatter on the hosts."""
    macs = {h: lab.run(getattr(lab, h), "cat", "/sys/class/net/eth0/address").stdout.strip()
            for h in ("h1", "h2")}
    for host, peer in (("h1", "h2"), ("h2", "h1")):
        ns = getattr(lab, host)
        lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0")
        lab.run(ns, "ip", "neigh", "replace", lab.addr[peer], "lladdr", macs[peer], "dev", "eth0",
                "nud", "permanent")


def link_counters(lab, ns: str, dev: str = "eth0") -> dict[str, int]:
    stats = json.loads(lab.run(ns, "ip", "-s", "-j", "link", "show", dev).stdout)[0]["stats64"]
    return {f"{d}_{k}": stats[d][k] for d in ("rx", "tx") for k in ("packets", "bytes")}


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def archive_rows(paths: list[Path]) -> tuple[list[tuple], list[dict]]:
    """(flow rows (proto, saddr, sport, daddr, dport, stime, spkts, dpkts, cause), archive infos)."""
    rows, infos = [], []
    for p in paths:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            rows += conn.execute("SELECT proto, saddr, sport, daddr, dport, stime, spkts, dpkts, cause"
                                 " FROM flows").fetchall()
            info = dict(conn.execute("SELECT key, value FROM archive_info").fetchall())
            info["path"] = p.name
            infos.append(info)
        finally:
            conn.close()
    return rows, infos


def check_sessions(log_path: Path, rows: list[tuple], h1: str, window: tuple[float, float],
                   slack: float = 2.0) -> dict:
    """Every logged session that started inside window must have a record (same proto and ports,
    saddr h1, stime within `slack` s of the logged start). Counts per minute."""
    index: dict[tuple, list[float]] = collections.defaultdict(list)
    for proto, saddr, sport, _daddr, dport, stime, *_ in rows:
        if saddr == h1:
            index[(proto, sport, dport)].append(stime)
    for v in index.values():
        v.sort()
    per_minute: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    sent = found = 0
    outside = 0
    missing: list[str] = []
    stream = 0
    for line in log_path.read_text().splitlines():
        if line.startswith("# stream"):
            stream = int(line.split()[2])
            continue
        t, proto, sport, dport, _ok = line.split()
        t, key = float(t), (int(proto), int(sport), int(dport))
        if not window[0] + slack <= t <= window[1] - slack:
            outside += 1
            continue
        sent += 1
        times = index.get(key, [])
        i = bisect.bisect_left(times, t - slack)
        hit = i < len(times) and times[i] <= t + slack
        minute = int(t // 60 * 60)
        per_minute[minute][0] += 1
        if hit:
            found += 1
            per_minute[minute][1] += 1
        elif len(missing) < 20:
            missing.append(line)
    return {"sessions_in_window": sent, "sessions_found": found, "sessions_outside_window": outside,
            "missing_examples": missing, "stream_packets_sent": stream,
            "per_minute": {time.strftime("%H:%M", time.gmtime(m)): v for m, v in sorted(per_minute.items())}}


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{MARK_BEGIN}\n{section.rstrip()}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


def drive(args: argparse.Namespace) -> int:
    from appliance import archive
    from appliance.netlab import Lab

    if os.geteuid() != 0:
        print("soak: needs root (network namespaces and a bridge)", file=sys.stderr)
        return 2
    work = Path(args.workdir or f"/tmp/flowtap-soak-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    data, run_dir = work / "data", work / "run"
    cfg_path, rec_log, load_log = work / "flowtap.toml", work / "recorder.log", work / "sessions.log"
    config = {"sensor": {"id": "soak"},
              "flows": {"max_flows": args.max_flows},
              "archive": {"rotate_interval": args.rotate, "commit_interval": 1.0,
                          "min_free_percent": 0, "quota_bytes": args.quota or 0}}
    cfg_path.write_text(toml(config))
    py = sys.executable
    nice = ["nice", "-n", str(args.nice)]
    procs: dict[str, subprocess.Popen] = {}
    samples: list[dict] = []
    duration = args.minutes * 60
    stop_flag = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_flag.set())
    command = " ".join(["python", "bench/soak.py", *sys.argv[1:]])
    print(f"soak: {args.minutes} min in {work}; command: {command}", flush=True)
    with Lab(prefix=f"ftsk{os.getpid() % 100000}") as lab:
        quiet(lab)
        try:
            with open(rec_log, "ab") as out:
                procs["recorder"] = lab.popen(lab.tap, *nice, py, "-m", "appliance.cli", "record", "-c",
                                              str(cfg_path), "-q", "-d", str(data), "--runtime-dir",
                                              str(run_dir), "-i", lab.bridge, cwd=REPO, stdout=out,
                                              stderr=subprocess.STDOUT)
            rec = procs["recorder"]
            deadline = time.monotonic() + 15
            while read_status(run_dir).get("pid") is None or rec.poll() is not None:
                if rec.poll() is not None or time.monotonic() > deadline:
                    print(f"soak: the recorder did not start:\n{rec_log.read_text()}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            rec_pid = read_status(run_dir)["pid"]
            t_ready = time.time()
            h1_start = link_counters(lab, lab.h1)
            procs["server"] = lab.popen(lab.h2, *nice, py, "-m", "appliance.demo", "server", cwd=REPO)
            procs["sink"] = lab.popen(lab.h2, *nice, py, str(Path(__file__).resolve()), "--role", "sink")
            time.sleep(1.0)
            procs["client"] = lab.popen(lab.h1, *nice, py, "-m", "appliance.demo", "client",
                                        lab.addr["h2"], lab.addr6["h2"], cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs["load"] = lab.popen(lab.h1, *nice, py, str(Path(__file__).resolve()), "--role", "load",
                                      "--server", lab.addr["h2"], "--log", str(load_log),
                                      "--tcp-rate", str(args.tcp_rate), "--udp-rate", str(args.udp_rate),
                                      "--stream-pps", str(args.stream_pps), "--seconds", str(duration))
            t0 = time.time()
            mono0 = time.monotonic()
            quota_set = bool(args.quota)
            next_sample = mono0
            while time.monotonic() - mono0 < duration and not stop_flag.is_set():
                if rec.poll() is not None:
                    print(f"soak: the recorder exited early:\n{rec_log.read_text()[-4000:]}", file=sys.stderr)
                    return 1
                if time.monotonic() >= next_sample:
                    next_sample += args.sample
                    s = proc_sample(rec_pid)
                    st = read_status(run_dir)
                    s.update(t=round(time.time() - t0, 1), packets=st.get("packets"),
                             records_written=st.get("records_written"), flows_active=st.get("flows_active"),
                             kernel_drops=st.get("kernel_drops"),
                             archives=(st.get("archive") or {}).get("archives"),
                             status_age=round(time.time() - st.get("time", 0), 1))
                    s["cpu_all"] = sum(proc_sample_safe(p.pid) for p in procs.values())
                    samples.append(s)
                    print("soak: " + json.dumps(s), flush=True)
                if not quota_set:
                    closed = [p for p in archive.list_archives(data / "archive") if archive.is_closed(p)]
                    if len(closed) >= 2:         # the first full period is the second closed file
                        size = closed[1].stat().st_size
                        config["archive"]["quota_bytes"] = int(size * (args.keep + 0.5))
                        cfg_path.write_text(toml(config))
                        os.kill(rec_pid, signal.SIGHUP)
                        quota_set = True
                        print(f"soak: one period's archive is {size:,} bytes: quota_bytes "
                              f"{config['archive']['quota_bytes']:,} (SIGHUP)", flush=True)
                time.sleep(0.5)
            # Stop the traffic, let the last answers cross, then stop the recorder.
            for name in ("load", "client"):
                procs[name].send_signal(signal.SIGTERM)
            for name in ("load", "client"):
                try:
                    procs[name].wait(15)
                except subprocess.TimeoutExpired:
                    procs[name].kill()
            time.sleep(2.0)
            t_end_traffic = time.time()
            h1_end = link_counters(lab, lab.h1)
            last_status = read_status(run_dir)
            final = proc_sample(rec_pid)
            final["t"] = round(time.time() - t0, 1)
            rec.send_signal(signal.SIGTERM)
            try:
                rc = rec.wait(60)
            except subprocess.TimeoutExpired:
                rec.kill()
                rc = "killed after 60 s"
            stopped = read_status(run_dir)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    # -- analysis ---------------------------------------------------------------------------------
    paths = archive.list_archives(data / "archive")
    rows, infos = archive_rows(paths)
    opened = [float(i.get("opened_at") or 0) for i in infos]
    # Sessions are checked from the opening of the oldest archive retention kept; if retention
    # deleted none, from the moment the recorder was ready (the first archive opens at its first
    # commit, and holds the records of sessions that began before that).
    deleted = "retention deleted" in rec_log.read_text(errors="replace")
    window = ((min(opened) if opened and deleted else t_ready), t_end_traffic)
    check = check_sessions(load_log, rows, lab.addr["h1"], window)
    h1_pkts = sum(h1_end[k] - h1_start[k] for k in ("rx_packets", "tx_packets"))
    warm = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    cpu_s = final["cpu_s"] - samples[0]["cpu_s"]
    wall = final["t"] - samples[0]["t"]
    result = {
        "duration_s": round(t_end_traffic - t0, 1), "recorder_exit": rc,
        "rss_kib": {"first": samples[0]["rss_kib"], "after_warmup": warm["rss_kib"],
                    "end": final["rss_kib"], "max": max(s["rss_kib"] for s in samples + [final])},
        "fds": {"first": samples[0]["fds"], "after_warmup": warm["fds"], "end": final["fds"],
                "max": max(s["fds"] for s in samples + [final])},
        "recorder_cpu_percent": round(100 * cpu_s / max(wall, 1e-9), 1),
        "all_cpu_percent": round(100 * (samples[-1]["cpu_all"] - samples[0]["cpu_all"])
                                 / max(samples[-1]["t"] - samples[0]["t"], 1e-9), 1),
        "packets_recorder": stopped.get("packets"), "packets_h1_eth0": h1_pkts,
        "records_written": stopped.get("records_written"), "records_lost": stopped.get("records_lost"),
        "kernel_drops": stopped.get("kernel_drops"), "interface_drops": stopped.get("interface_drops"),
        "flows_evicted": stopped.get("flows_evicted"), "write_errors": stopped.get("write_errors"),
        "decode_errors": sum((stopped.get("decode_errors") or {}).values()),
        "archives_retained": len(paths), "quota_bytes": config["archive"]["quota_bytes"],
        "archive_bytes": sum(p.stat().st_size for p in paths),
        "records_retained": len(rows),
        "window": [time.strftime("%H:%M:%S", time.gmtime(w)) for w in window],
        **{k: v for k, v in check.items() if k != "per_minute"},
        "per_minute_sent_found": check["per_minute"],
        "last_status_before_stop": {k: last_status.get(k) for k in ("packets", "records_written",
                                                                     "flows_active", "kernel_drops")},
    }
    lost = result["sessions_in_window"] - result["sessions_found"]
    drops = (result["kernel_drops"] or 0) + (result["records_lost"] or 0)
    rss_growth = result["rss_kib"]["end"] - result["rss_kib"]["after_warmup"]
    verdict = {
        "no session lost outside reported drops": lost == 0 or (drops > 0 and lost <= drops),
        "recorder exited 0 on SIGTERM": rc == 0,
        "fds flat (end <= after warm-up + 2)": result["fds"]["end"] <= result["fds"]["after_warmup"] + 2,
        "RSS flat (end <= after warm-up + 10% + 8 MiB)":
            rss_growth <= 0.10 * result["rss_kib"]["after_warmup"] + 8192,
        "retention kept about --keep archives": not args.keep or len(paths) <= args.keep + 2,
    }
    result["verdict"] = verdict
    (work / "result.json").write_text(json.dumps({"result": result, "samples": samples}, indent=1))
    print(json.dumps(result, indent=1))
    if not args.no_results:
        write_results(section(result, samples, command, args))
        print(f"soak: wrote the Soak section of {RESULTS}")
    return 0 if all(verdict.values()) else 1


def proc_sample_safe(pid: int) -> float:
    try:
        return proc_sample(pid)["cpu_s"]
    except (FileNotFoundError, ProcessLookupError, AttributeError):
        return 0.0


def section(r: dict, samples: list[dict], command: str, args: argparse.Namespace) -> str:
    mib = lambda k: f"{k / 1024:.1f}"
    lines = [
        "## Soak",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; revision: {revision()}",
        f"- machine: nproc {os.cpu_count()}, Linux {platform.release()}, Python {platform.python_version()}",
        f"- command: `{command}` (as root)",
        f"- setup: `flowtap record -i br0` in the tap namespace of the netlab bridge; archive.rotate_interval "
        f"{args.rotate} s, quota_bytes {r['quota_bytes']:,} (≈{args.keep} periods, set by SIGHUP after the "
        f"first full period); traffic: demo server/client roles, {args.tcp_rate:g} TCP sessions/s, "
        f"{args.udp_rate:g} UDP request/response sessions/s, one UDP stream at {args.stream_pps:g} packets/s",
        f"- duration: {r['duration_s']:.0f} s; samples every {args.sample:g} s; recorder CPU "
        f"{r['recorder_cpu_percent']}% of one core (all soak processes {r['all_cpu_percent']}%)",
        "",
        "| | first sample | after warm-up | end | max |",
        "|---|---:|---:|---:|---:|",
        f"| recorder RSS (MiB) | {mib(r['rss_kib']['first'])} | {mib(r['rss_kib']['after_warmup'])} | "
        f"{mib(r['rss_kib']['end'])} | {mib(r['rss_kib']['max'])} |",
        f"| open fds | {r['fds']['first']} | {r['fds']['after_warmup']} | {r['fds']['end']} | {r['fds']['max']} |",
        "",
        "| count | value |",
        "|---|---:|",
        f"| packets metered (status.json) | {r['packets_recorder']:,} |",
        f"| packets on h1's eth0 (rx + tx, interface counters) | {r['packets_h1_eth0']:,} |",
        f"| records written | {r['records_written']:,} |",
        f"| kernel drops / interface drops | {r['kernel_drops']} / {r['interface_drops']} |",
        f"| records lost (writer) / write errors | {r['records_lost']} / {r['write_errors']} |",
        f"| flows evicted / decode errors | {r['flows_evicted']} / {r['decode_errors']} |",
        f"| archives retained (bytes) | {r['archives_retained']} ({r['archive_bytes']:,}) |",
        f"| retained window (UTC) | {r['window'][0]} – {r['window'][1]} |",
        f"| generator sessions started in the window | {r['sessions_in_window']:,} |",
        f"| of those with a record in the retained archives | {r['sessions_found']:,} |",
        f"| UDP stream packets sent | {r['stream_packets_sent']:,} |",
        f"| recorder exit status after SIGTERM | {r['recorder_exit']} |",
        "",
        "Checks: " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["verdict"].items()) + ".",
    ]
    if r["missing_examples"]:
        lines += ["", "Sessions without a record (first ones, `time proto sport dport answered`): "
                  + ", ".join(f"`{m}`" for m in r["missing_examples"][:5])]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rotate", type=int, default=60, help="archive.rotate_interval (s)")
    ap.add_argument("--keep", type=int, default=10, help="archives the quota should keep")
    ap.add_argument("--quota", type=int, default=0, help="quota_bytes (default: measured, see --keep)")
    ap.add_argument("--max-flows", type=int, default=262_144)
    ap.add_argument("--tcp-rate", type=float, default=40, help="TCP sessions per second")
    ap.add_argument("--udp-rate", type=float, default=400, help="UDP sessions per second")
    ap.add_argument("--stream-pps", type=float, default=1500, help="packets/s of the UDP stream")
    ap.add_argument("--sample", type=float, default=10, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=120, help="seconds before the 'after warm-up' sample")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--workdir")
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--role", choices=("drive", "load", "sink"), default="drive", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "sink":
        role_sink()
        return 0
    if args.role == "load":
        role_load(args.server, args.log, args.tcp_rate, args.udp_rate, args.stream_pps, args.seconds)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
