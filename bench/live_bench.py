"""Live benchmark: the highest replay rate through a veth bridge in namespaces that a sensor records
with zero capture drops (DESIGN.md, Performance), for three sensors in one run:

  br0     flowtap record -i br0                                  (the bridge device)
  ports   flowtap record -i p1 -i p2, capture.inbound_only = true  (the member ports)
  argus   argus -X -i br0 -w FILE                                 (the reference)

tcpreplay sends the generated capture (bench/gen_capture.py) out of h1's eth0 at rising --pps steps,
then at --topspeed; each step gets a fresh sensor. A step is clean when the sensor saw every packet
sent and its kernel reported no drops (flowtap: status.json ``kernel_drops``, libpcap's ps_drop per
ring; argus: packets in its man records, ``ra -r FILE -s spkts - man``, against packets sent). h2's
eth0 counters show whether the bridge forwarded everything. Bridge learning is off on p1/p2 so that
every replayed frame (whatever its MACs) floods to h2. flowtap's CPU time per packet is utime+stime
from /proc/PID/stat between start and stop, over the packets it metered. Memory per flow-table
entry comes from ``capture.lib.sensor_entry_size()``.

Needs root, iproute2, tcpreplay, argus-server and argus-client. Results are printed and written into
the ``live`` section of bench/RESULTS.md.

Example:
    .venv/bin/python bench/live_bench.py
    .venv/bin/python bench/live_bench.py --rates 20000,40000 --seconds 2 --no-results
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import run as bench_run                          # noqa: E402  (bench/run.py: shared report helpers)
from appliance import capture as ft_capture      # noqa: E402
from appliance.config import CaptureConfig, FlowsConfig  # noqa: E402
from appliance.netlab import Lab                 # noqa: E402

CAPTURE = bench_run.OUT / "live-300k.pcap"
GENERATOR = ["--packets", "300000", "--sessions", "30000"]
RATES = (5_000, 10_000, 20_000, 40_000, 80_000, 160_000)
CLK_TCK = os.sysconf("SC_CLK_TCK")
COMMAND = ".venv/bin/python bench/live_bench.py"
MAR_INTERVAL = 1                  # seconds between argus man records (-M)


@dataclass
class Step:
    """One replay at one rate into one fresh sensor."""

    sensor: str
    rate: str                     # requested: "40,000 pps" or "topspeed"
    sent: int = 0
    achieved_pps: float = 0.0
    seen: int = 0                 # packets the sensor metered
    drops: int | None = None      # kernel (ring) drops the sensor reported (flowtap only)
    forwarded: int = 0            # packets h2's eth0 received
    cpu_s: float | None = None    # sensor CPU time over the step

    @property
    def missed(self) -> int:
        return max(0, self.sent - self.seen)

    @property
    def clean(self) -> bool:
        return not self.drops and not self.missed

    @property
    def cpu_us_per_packet(self) -> float | None:
        return None if self.cpu_s is None or not self.seen else 1e6 * self.cpu_s / self.seen


# -- the lab ----------------------------------------------------------------------------------------

def prepare(lab: Lab) -> None:
    """Bridge learning off (replayed frames, whatever their MACs, must all reach h2); wait until the
    ports forward (the kernel enables them up to a second after they come up)."""
    for port in lab.ports:
        lab.run(lab.tap, "bridge", "link", "set", "dev", port, "learning", "off")
    deadline = time.monotonic() + 5
    while lab.run(lab.tap, "cat", *(f"/sys/class/net/{p}/brport/state" for p in lab.ports)).stdout.split() \
            != ["3"] * len(lab.ports):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the bridge ports never started forwarding")
        time.sleep(0.05)


def rx_packets(lab: Lab, ns: str) -> int:
    stats = json.loads(lab.run(ns, "ip", "-s", "-j", "link", "show", "eth0").stdout)[0]["stats64"]
    return stats["rx"]["packets"]


def count_packets(path: Path) -> int:
    """Records in a classic pcap file (microsecond or nanosecond, either byte order)."""
    with open(path, "rb") as f:
        magic = f.read(24)[:4]
        order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        n = 0
        while len(header := f.read(16)) == 16:
            f.seek(struct.unpack(order + "I", header[8:12])[0], os.SEEK_CUR)
            n += 1
    return n


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def replay(lab: Lab, rate: int | None, packets: int) -> tuple[int, float]:
    """tcpreplay from h1's eth0: (packets sent, achieved packets/s)."""
    pace = ["--topspeed"] if rate is None else ["--pps", str(rate)]
    out = lab.run(lab.h1, "tcpreplay", "-q", "-i", "eth0", *pace, "-L", str(packets), str(CAPTURE),
                  timeout=600).stdout
    sent = re.search(r"Actual: (\d+) packets", out)
    pps = re.search(r"([\d.]+) pps", out)
    if not sent or not pps:
        raise SystemExit(f"bench: cannot read tcpreplay's summary:\n{out}")
    return int(sent.group(1)), float(pps.group(1))


# -- sensors ----------------------------------------------------------------------------------------

class Flowtap:
    """`flowtap record` in the tap namespace (br0, or the member ports inbound only)."""

    def __init__(self, lab: Lab, workdir: Path, interfaces: list[str]):
        self.lab, self.workdir, self.interfaces = lab, workdir, interfaces
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "flowtap.toml"
        inbound = "true" if len(interfaces) > 1 else "false"
        self.config.write_text(f'[sensor]\nid = "bench"\n[capture]\ninbound_only = {inbound}\n'
                               "[archive]\nmin_free_percent = 0\n")

    def start(self) -> None:
        argv = [sys.executable, "-m", "appliance.cli", "record", "-q", "-c", str(self.config),
                "-d", str(self.workdir / "data"), "--runtime-dir", str(self.workdir / "run")]
        for iface in self.interfaces:
            argv += ["-i", iface]
        (self.workdir / "run" / "status.json").unlink(missing_ok=True)
        self.proc = self.lab.popen(self.lab.tap, *argv, cwd=REPO, stderr=subprocess.DEVNULL)
        wait(lambda: self.status().get("pid") == self.proc.pid or self.proc.poll() is not None, 15)
        if self.proc.poll() is not None:
            raise SystemExit("bench: flowtap record exited at start")
        self.cpu0 = cpu_seconds(self.proc.pid)

    def status(self) -> dict:
        try:
            return json.loads((self.workdir / "run" / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def stop(self, step: Step) -> None:
        step.cpu_s = cpu_seconds(self.proc.pid) - self.cpu0
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        final = self.status()                    # written after the last packet was metered
        step.seen = sum(i["packets"] for i in final["interfaces"])
        step.drops = final["kernel_drops"]


class Argus:
    """`argus -X -i br0 -w FILE` in the tap namespace. Its man records count the packets it processed
    (pktsRcvd): fewer than were sent means it dropped some."""

    def __init__(self, lab: Lab, workdir: Path):
        self.lab, self.workdir = lab, workdir
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.file = self.workdir / f"argus-{self.runs}.arg"
        self.proc = self.lab.popen(self.lab.tap, "argus", "-X", "-i", "br0", "-M", str(MAR_INTERVAL), "-w",
                                   str(self.file),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # argus writes its start man record once the interface is open; give it a moment more.
        wait(lambda: self.file.exists() and self.file.stat().st_size > 0 or self.proc.poll() is not None, 15)
        time.sleep(0.5)
        self.cpu0 = cpu_seconds(self.proc.pid)

    def stop(self, step: Step) -> None:
        # Its stop record does not count the last partial interval: let one more man record pass.
        time.sleep(MAR_INTERVAL + 0.5)
        step.cpu_s = cpu_seconds(self.proc.pid) - self.cpu0
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        out = subprocess.run(["ra", "-r", str(self.file), "-n", "-L", "-1", "-s", "spkts", "-", "man"],
                             capture_output=True, text=True, check=True).stdout
        step.seen = sum(int(n) for n in out.split())


def wait(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting for a sensor to start")
        time.sleep(0.05)


def run_step(lab: Lab, sensor, name: str, rate: int | None, seconds: float, total: int) -> Step:
    packets = total if rate is None else min(total, int(rate * seconds))
    step = Step(name, "topspeed" if rate is None else f"{rate:,} pps")
    sensor.start()
    try:
        before = rx_packets(lab, lab.h2)
        step.sent, step.achieved_pps = replay(lab, rate, packets)
        time.sleep(0.3)                           # the last ring block is handed over (100 ms timeout)
        step.forwarded = rx_packets(lab, lab.h2) - before
    except BaseException:
        sensor.proc.kill()
        raise
    sensor.stop(step)
    print(f"  {name:6} {step.rate:>12}: sent {step.sent:,} at {step.achieved_pps:,.0f} pps, seen {step.seen:,},"
          f" kernel drops {step.drops if step.drops is not None else '-'}, h2 got {step.forwarded:,}"
          + (f", {step.cpu_us_per_packet:.2f} µs CPU/packet" if step.cpu_us_per_packet else ""), flush=True)
    return step


def bench_sensor(lab: Lab, sensor, name: str, rates: list[int], seconds: float, total: int) -> list[Step]:
    """Rising rates until a step drops, then top speed (if every rate was clean)."""
    steps = []
    for rate in [*rates, None]:
        step = run_step(lab, sensor, name, rate, seconds, total)
        steps.append(step)
        if not step.clean:
            break
    return steps


# -- report -----------------------------------------------------------------------------------------

def highest_clean(steps: list[Step]) -> str:
    """The highest achieved rate of a clean step (stops at the first step that dropped)."""
    clean = []
    for s in steps:
        if not s.clean:
            break
        clean.append(s)
    if not clean:
        return "none: drops at the lowest rate"
    best = max(clean, key=lambda s: s.achieved_pps)
    if len(clean) == len(steps):
        return f"≥ {best.achieved_pps:,.0f} pps: no drops at any rate tcpreplay reached"
    return f"{best.achieved_pps:,.0f} pps ({best.rate} requested; drops at {steps[len(clean)].rate})"


def largest_step_cpu(steps: list[Step]) -> str:
    """CPU µs per packet over the step with the most packets (the finest measurement)."""
    timed = [s for s in steps if s.cpu_us_per_packet]
    if not timed:
        return "–"
    s = max(timed, key=lambda s: s.seen)
    return f"{s.cpu_us_per_packet:.2f} ({s.seen:,} packets, {s.rate})"


def report(steps: dict[str, list[Step]], commands: dict[str, str], total: int, seconds: float) -> list[str]:
    entry = ft_capture.lib.sensor_entry_size()
    capacity = FlowsConfig().max_flows
    lines = ["## Live: highest zero-drop rate through a veth bridge", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; revision: {bench_run.revision()}",
             f"- machine: {bench_run.machine()}; load average before the run {os.getloadavg()[0]:.1f}",
             f"- capture: `{CAPTURE.relative_to(REPO)}`, {total:,} packets, from "
             f"`python bench/gen_capture.py {' '.join(GENERATOR)}`; replayed with "
             f"`tcpreplay -q -i eth0 --pps RATE -L RATE*{seconds:g} FILE` in h1 (then `--topspeed`, whole file)",
             f"- command: `{COMMAND}`; lab: appliance/netlab.py (h1 → br0 (p1, p2) → h2), bridge learning off; "
             f"a fresh sensor per step; flowtap with the default capture config (ring {CaptureConfig().ring_bytes >> 20} MiB, "
             f"snaplen {CaptureConfig().snaplen}, no BPF filter)",
             "- sensors: " + "; ".join(f"{k}: `{v}`" for k, v in commands.items()), "",
             "| sensor | requested | achieved pps | sent | seen by sensor | missed | kernel drops |"
             " forwarded to h2 | CPU µs/packet |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rows in steps.items():
        for s in rows:
            cpu = f"{s.cpu_us_per_packet:.2f}" if s.cpu_us_per_packet else "–"
            drops = "–" if s.drops is None else f"{s.drops:,}"
            lines.append(f"| {name} | {s.rate} | {s.achieved_pps:,.0f} | {s.sent:,} | {s.seen:,} | {s.missed:,} |"
                         f" {drops} | {s.forwarded:,} | {cpu} |")
    lines += ["", "| sensor | highest rate with zero capture drops | CPU µs/packet (largest step) |",
              "|---|---|---|"]
    lines += [f"| {name} | {highest_clean(rows)} | {largest_step_cpu(rows)} |" for name, rows in steps.items()]
    lines += ["",
              "- CPU per packet: utime+stime from /proc/PID/stat between the sensor's start (after startup) and "
              "SIGTERM, over the packets it metered; the clock tick is 10 ms, so small steps are coarse",
              f"- memory per flow-table entry: {entry} bytes (`capture.lib.sensor_entry_size()`); "
              f"at most {entry * capacity / 2**20:.1f} MiB for the default {capacity:,} flows (pages are "
              "touched as entries are first used, so resident memory follows the concurrent flows)",
              "- every step's bridge check: " + ("h2 received every packet sent" if all(
                  s.forwarded >= s.sent for rows in steps.values() for s in rows) else
                  "h2 missed packets in some steps (see the table): the bridge or veth dropped them")]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Example: .venv/bin/python bench/live_bench.py")
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="pps steps, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of traffic per rate step")
    parser.add_argument("--no-results", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: the live benchmark needs root (namespaces, bridge, capture)", file=sys.stderr)
        return 2
    for tool in ("ip", "tcpreplay", "argus", "ra"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (apt-get install iproute2 tcpreplay argus-server argus-client)",
                  file=sys.stderr)
            return 2
    bench_run.ensure_capture(CAPTURE, GENERATOR)
    total = count_packets(CAPTURE)
    rates = [int(r) for r in args.rates.split(",") if r]
    commands = {"br0": "flowtap record -c CONFIG -i br0", "ports": "flowtap record -c CONFIG -i p1 -i p2 "
                "(capture.inbound_only = true)", "argus": "argus -X -i br0 -M 1 -w FILE"}
    steps: dict[str, list[Step]] = {}
    with Lab(prefix=f"ftbench{os.getpid()}") as lab, tempfile.TemporaryDirectory(prefix="ftbench-") as tmp:
        prepare(lab)
        work = Path(tmp)
        sensors = {"br0": Flowtap(lab, work / "br0", ["br0"]),
                   "ports": Flowtap(lab, work / "ports", ["p1", "p2"]),
                   "argus": Argus(lab, work)}
        for name, sensor in sensors.items():
            print(f"{name}: {commands[name]}", flush=True)
            steps[name] = bench_sensor(lab, sensor, name, rates, args.seconds, total)
    body = report(steps, commands, total, args.seconds)
    print("\n".join(body))
    if not args.no_results:
        bench_run.write_results("live", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
