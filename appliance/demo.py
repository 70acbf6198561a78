"""`flowtap demo`: a bridge in network namespaces, real traffic through it, the real recorder on it.

Two hosts (h1, h2) talk through br0 in a third namespace: HTTP-like TCP transfers, DNS-like UDP,
ping, IPv6 and 802.1Q-tagged frames. The recorder runs in the tap namespace exactly as on the
appliance; the web page (when present) serves its archives. Ctrl-C tears everything down.

The traffic roles run as ``python -m appliance.demo server|client ADDR`` inside the namespaces.
"""
from __future__ import annotations

import json
import os
import random
import struct
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import netlab
from .netlab import Lab

HTTP_PORT, DNS_PORT = 8080, 5353


# -- traffic roles (run inside a namespace) -------------------------------------------------------

def serve() -> None:
    """h2: answer HTTP-like requests on TCP 8080 (v4 and v6) and DNS-like queries on UDP 5353."""
    def http_loop(family: int, addr: str) -> None:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)   # v4 has its own socket
        s.bind((addr, HTTP_PORT))
        s.listen(16)
        while True:
            conn, _ = s.accept()
            with conn:
                request = conn.recv(4096)
                try:
                    size = int(request.split()[1].strip(b"/") or b"1000")
                except (IndexError, ValueError):
                    size = 1000
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)

    def dns_loop() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", DNS_PORT))
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(data[:2] + b"\x81\x80" + data[4:] + b"\x00" * 16, peer)

    threads = [threading.Thread(target=http_loop, args=(socket.AF_INET, "0.0.0.0"), daemon=True),
               threading.Thread(target=http_loop, args=(socket.AF_INET6, "::"), daemon=True),
               threading.Thread(target=dns_loop, daemon=True)]
    for t in threads:
        t.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def tagged_frame(src_mac: bytes, vlan: int, src: str, dst: str, payload: bytes) -> bytes:
    """A broadcast 802.1Q-tagged IPv4/UDP frame (sent raw: no VLAN interface is needed)."""
    udp = struct.pack("!HHHH", 40000 + vlan, DNS_PORT, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    csum = sum(struct.unpack("!10H", ip))
    csum = (csum & 0xFFFF) + (csum >> 16)
    ip = ip[:10] + struct.pack("!H", ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF) + ip[12:]
    return b"\xff" * 6 + src_mac + struct.pack("!HHH", 0x8100, vlan, 0x0800) + ip + udp


def client(server4: str, server6: str) -> None:
    """h1: a mix of web transfers, name lookups, pings and VLAN-tagged frames, at a human pace."""
    rng = random.Random(7)
    mac = bytes.fromhex(Path("/sys/class/net/eth0/address").read_text().strip().replace(":", ""))
    while True:
        kind = rng.choice(("http", "http", "http6", "dns", "dns", "ping", "vlan"))
        try:
            if kind == "vlan":
                with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
                    raw.bind(("eth0", 0))
                    raw.send(tagged_frame(mac, 100, "10.77.100.1", "10.77.100.255", b"hello vlan"))
                continue
            if kind.startswith("http"):
                family, host = (socket.AF_INET6, server6) if kind == "http6" else (socket.AF_INET, server4)
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect((host, HTTP_PORT))
                    s.sendall(b"GET /%d HTTP/1.0\r\n\r\n" % rng.choice((512, 4096, 65536, 400000)))
                    while s.recv(65536):
                        pass
            elif kind == "dns":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(2)
                    qid = rng.randrange(65536).to_bytes(2, "big")
                    s.sendto(qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
                             (server4, DNS_PORT))
                    s.recvfrom(2048)
            else:
                subprocess.run(["ping", "-c", "2", "-i", "0.3", server4], capture_output=True)
        except OSError:
            pass
        time.sleep(rng.uniform(0.2, 1.5))


# -- the demo itself ------------------------------------------------------------------------------

def run(data_dir: str, runtime_dir: str, web_listen: str | None = None) -> int:
    """Build the lab, record it and print a line of status every few seconds until Ctrl-C.

    :param web_listen: also serve the admin page on HOST:PORT (the root namespace) if given.
    """
    if os.geteuid() != 0:
        print("flowtap demo needs root: it creates network namespaces and a bridge", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    exe = [sys.executable, "-m"]
    procs: list[subprocess.Popen] = []
    with Lab(prefix="ftdemo") as lab:
        try:
            procs.append(lab.popen(lab.tap, *exe, "appliance.cli", "record", "-i", lab.bridge, "-d", data_dir,
                                   "--runtime-dir", runtime_dir, "-q"))
            procs.append(lab.popen(lab.h2, *exe, "appliance.demo", "server"))
            time.sleep(1.0)
            procs.append(lab.popen(lab.h1, *exe, "appliance.demo", "client", lab.addr["h2"], lab.addr6["h2"]))
            if web_listen:
                procs.append(subprocess.Popen([*exe, "appliance.cli", "web", "--listen", web_listen,
                                               "--data-dir", data_dir, "--runtime-dir", runtime_dir]))
            print(f"demo: recording br0 between {lab.addr['h1']} and {lab.addr['h2']} into {data_dir}"
                  + (f"; admin page on http://{web_listen}/" if web_listen else "") + " (Ctrl-C stops)")
            status = Path(runtime_dir) / "status.json"
            while not stop.wait(5):
                if procs[0].poll() is not None:
                    print("demo: the recorder exited", file=sys.stderr)
                    return 1
                if status.exists():
                    doc = json.loads(status.read_text())
                    print(f"demo: {doc['packets']:,} packets, {doc['records_written']:,} records written, "
                          f"{doc['flows_active']} sessions open, {doc['pps']:.0f} packets/s")
        finally:
            netlab.stop(procs)
    print(f"demo: stopped; archives are in {data_dir}/archive")
    return 0


def _role() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if sys.argv[1:2] == ["server"]:
            serve()
        elif sys.argv[1:2] == ["client"]:
            client(sys.argv[2], sys.argv[3])
        else:
            sys.exit("usage: python -m appliance.demo server | client ADDR4 ADDR6")
    except KeyboardInterrupt:       # Ctrl-C reaches the whole process group: the demo tears down
        pass


if __name__ == "__main__":
    _role()
