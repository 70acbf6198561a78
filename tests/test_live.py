"""Live tests: two hosts exchange real traffic through a real Linux bridge with the real recorder on
it (`flowtap record` in the tap namespace), and the archived records must equal what was sent.

Ground truth comes from the sockets (payload bytes) and from an independent capture on h1's eth0
that is itself checked against the interface's own counters (conftest_live.sniffing). Root only:
without root or namespaces these tests fail, they never skip (DESIGN.md, Tests).
"""
from __future__ import annotations

import signal
import socket
import threading

import pytest

from appliance import archive
from appliance.demo import tagged_frame
from conftest_live import (  # noqa: F401  (fixtures are found by name)
    Count, bridge, lab, link_counters, mac_of, recorder, send_datagrams, send_raw, send_udp_burst, settle,
    sniffing, tcp_session, udp_exchange, wait_for)

pytestmark = pytest.mark.live


def key_of(r: dict) -> tuple:
    return r["proto"], r["saddr"], r["sport"], r["daddr"], r["dport"]


def matching(key: tuple):
    """Predicate: a record of this 5-tuple (initiator first)."""
    return lambda r: key_of(r) == tuple(key)


def only(records: list[dict], key: tuple) -> dict:
    """The one record of a flow (fails if there are none or several)."""
    found = [r for r in records if key_of(r) == tuple(key)]
    assert len(found) == 1, f"expected one record of {key}, got {found}"
    return found[0]


def assert_counts(r: dict, count: Count, sapp: int, dapp: int) -> None:
    """Packets and wire bytes as captured on h1, payload bytes as the sockets sent them."""
    got = (r["spkts"], r["dpkts"], r["sbytes"], r["dbytes"], r["sappbytes"], r["dappbytes"])
    want = (count.spkts, count.dpkts, count.sbytes, count.dbytes, sapp, dapp)
    assert got == want, f"(spkts dpkts sbytes dbytes sappbytes dappbytes) {got} != {want}"


# (a) -------------------------------------------------------------------------------------------

CLOSED_SESSIONS = [      # how the session ends, bytes client → server, server → client, state, conn_state
    ("fin", 3000, 50_000, "FIN", "SF"),
    ("rst", 1200, 700, "RST", "RSTO"),
    ("rst-server", 500, 20_000, "RST", "RSTR"),
]


def test_tcp_sessions_count_what_the_hosts_sent(lab, recorder):
    """Each TCP session alone on the wire: payload bytes equal what the sockets sent, packets and
    bytes equal h1's capture (checked against eth0's counters), states match how it ended."""
    rec = recorder()
    for close, nsend, nrecv, state, conn_state in CLOSED_SESSIONS:
        with sniffing(lab) as sniffer:
            s = tcp_session(lab, nsend, nrecv, close)
            r = rec.wait_record(matching(s.key), f"the {close} session")
        assert_counts(r, sniffer.count(s.key), nsend, nrecv)
        assert (r["state"], r["conn_state"], r["cause"], r["dir"]) == (state, conn_state, "Stop", "->"), close
    with sniffing(lab) as sniffer:
        s = tcp_session(lab, 4000, 9000, "open")
        settle(lab)
        assert rec.stop() == 0
    r = only(rec.records(), s.key)
    assert_counts(r, sniffer.count(s.key), 4000, 9000)
    assert (r["state"], r["conn_state"], r["cause"]) == ("CON", "S1", "Shutdown")
    s.close()


# (b) -------------------------------------------------------------------------------------------

def test_udp_icmp_ipv6_and_vlan_are_recorded(lab, recorder):
    rec = recorder()
    mac = mac_of(lab, "h1")
    vlan_frames = [tagged_frame(mac, 100, "10.77.100.1", "10.77.100.255", b"hello vlan")] * 4
    h1, h2 = lab.addr["h1"], lab.addr["h2"]
    with sniffing(lab) as sniffer:
        udp = udp_exchange(lab, b"q" * 33, b"r" * 120)
        lab.run(lab.h1, "ping", "-c", "3", "-i", "0.2", "-s", "100", h2)
        tcp6 = tcp_session(lab, 700, 9000, "fin", family=socket.AF_INET6)
        udp6 = udp_exchange(lab, b"Q" * 21, b"R" * 400, family=socket.AF_INET6)
        send_raw(lab, vlan_frames)
        settle(lab)
        assert rec.stop() == 0
    records = rec.records()

    r = only(records, udp)
    assert_counts(r, sniffer.count(udp), 33, 120)
    assert (r["state"], r["dir"]) == ("CON", "<->")

    r = only(records, udp6)
    assert_counts(r, sniffer.count(udp6), 21, 400)

    r = only(records, tcp6.key)
    assert_counts(r, sniffer.count(tcp6.key), 700, 9000)
    assert (r["state"], r["conn_state"]) == ("FIN", "SF")

    echo = [r for r in records if (r["proto"], r["saddr"], r["daddr"], r["sport"]) == (1, h1, h2, 8)]
    assert echo and all((r["state"], r["dir"]) == ("ECO", "<->") for r in echo), echo
    total = Count(*(sum(r[k] for r in echo) for k in ("spkts", "dpkts", "sbytes", "dbytes")))
    assert total == sniffer.count((1, h1, 8, h2, 0), reverse=(1, h2, 0, h1, 0))
    assert total.spkts == 3
    # Argus -A: the whole ICMP message (8-byte header + 100 data bytes) per echo.
    assert [sum(r[k] for r in echo) for k in ("sappbytes", "dappbytes")] == [3 * 108, 3 * 108]

    vlan_key = (17, "10.77.100.1", 40100, "10.77.100.255", 5353)
    r = only(records, vlan_key)
    assert_counts(r, sniffer.count(vlan_key), 4 * len(b"hello vlan"), 0)
    assert (r["svlan"], r["flgs"][1], r["dir"]) == (100, "*", "->")


# (c) -------------------------------------------------------------------------------------------

def test_bridge_and_member_ports_count_each_frame_once(lab, recorder):
    """The same traffic recorded at once on br0 and on p1+p2 (inbound only): both equal h1's capture,
    so no frame is counted twice; on the member ports sintf is the initiator's port."""
    on_bridge = recorder(("br0",), name="br0")
    on_ports = recorder(("p1", "p2"), {"capture": {"inbound_only": True}}, name="ports")
    with sniffing(lab) as sniffer:
        from_h1 = tcp_session(lab, 2500, 30_000, "fin")
        from_h2 = tcp_session(lab, 1800, 4000, "fin", client="h2", server="h1", port=9090)
        udp = udp_exchange(lab, b"q" * 50, b"r" * 70)
        for rec in (on_bridge, on_ports):
            for s in (from_h1, from_h2):
                rec.wait_record(matching(s.key), "a TCP session")
        assert on_bridge.stop() == 0 and on_ports.stop() == 0
    at_bridge, at_ports = on_bridge.records(), on_ports.records()
    sessions = ((from_h1.key, 2500, 30_000, 0), (from_h2.key, 1800, 4000, 1), (udp, 50, 70, 0))
    for key, sapp, dapp, port in sessions:
        b, p = only(at_bridge, key), only(at_ports, key)
        for r in (b, p):
            assert_counts(r, sniffer.count(key), sapp, dapp)
        # Both saw the same frames in the same order (history and RTT depend on it).
        fields = ("state", "conn_state", "history", "dir")
        assert [p[f] for f in fields] == [b[f] for f in fields], key
        assert (b["sintf"], p["sintf"]) == (0, port), f"sintf of {key}: the initiator's port is p{port + 1}"


# (d) -------------------------------------------------------------------------------------------

def test_kill9_leaves_traffic_flowing_and_the_archive_recoverable(lab, recorder):
    rec = recorder()
    before = tcp_session(lab, 100, 100, "fin")
    rec.wait_record(matching(before.key), "a session before the crash")
    crashed = rec.archives()
    total = 128 * (1 << 16)                        # 8 MiB at 64 KiB per 20 ms: about 2.6 s
    done: list = []
    transfer = threading.Thread(target=lambda: done.append(
        tcp_session(lab, total, 1000, "fin", port=8081, pace=0.02)))
    transfer.start()
    wait_for(lambda: rec.status().get("flows_active", 0) >= 1, 5, "the transfer to be seen")
    rec.kill()
    assert transfer.is_alive(), "the transfer ended before the recorder was killed"
    transfer.join(30)
    assert done, "the transfer did not complete after the recorder was killed"   # tcp_session checks bytes

    rec.start()                                    # same data directory: recovers, then records
    [old] = crashed
    conn = archive.open_readonly(old)
    try:
        assert archive.read_info(conn)["state"] == "recovered"
        assert before.key in conn.execute("SELECT proto, saddr, sport, daddr, dport FROM flows").fetchall()
    finally:
        conn.close()
    after = tcp_session(lab, 300, 400, "fin")
    r = rec.wait_record(matching(after.key), "a session after the restart")
    assert (r["sappbytes"], r["dappbytes"], r["conn_state"]) == (300, 400, "SF")
    assert rec.stop() == 0
    assert len(rec.archives()) == 2


# (e) -------------------------------------------------------------------------------------------

def test_sigterm_ends_every_open_session_with_shutdown(lab, recorder):
    rec = recorder()
    tcp4 = tcp_session(lab, 10, 20, "open")
    tcp6 = tcp_session(lab, 30, 40, "open", family=socket.AF_INET6)
    udp = udp_exchange(lab, b"a", b"b")
    send_raw(lab, [tagged_frame(mac_of(lab, "h1"), 7, "10.77.7.1", "10.77.7.255", b"x")])
    settle(lab)
    late = send_datagrams(lab, range(20000, 20100))    # still in the capture ring at SIGTERM
    assert rec.stop() == 0
    records = rec.records()
    vlan_key = (17, "10.77.7.1", 40007, "10.77.7.255", 5353)
    opened = [(tcp4.key, "CON"), (tcp6.key, "CON"), (udp, "CON"), (vlan_key, "INT")]
    for key, state in opened + [(key, "INT") for key in late]:
        r = only(records, key)
        assert (r["cause"], r["state"]) == ("Shutdown", state), key
    assert all(r["cause"] == "Shutdown" for r in records)
    assert rec.status()["state"] == "stopped"
    [path] = rec.archives()
    assert archive.is_closed(path)
    for s in (tcp4, tcp6):
        s.close()


def test_sighup_applies_a_new_bpf_filter_in_place(lab, recorder):
    rec = recorder(config={"capture": {"bpf": ""}})
    pid = rec.pid
    kept = udp_exchange(lab, b"k1", b"k1", sport=7101, dport=7001)
    filtered_later = udp_exchange(lab, b"f1", b"f1", sport=7102, dport=7002)
    settle(lab)
    rec.write_config(capture={"bpf": "not udp port 7002"})
    rec.signal(signal.SIGHUP)
    wait_for(lambda: rec.status().get("bpf") == "not udp port 7002", 5, "the new filter in status.json")
    assert rec.status()["pid"] == pid and not rec.exited()
    kept2 = udp_exchange(lab, b"k2", b"k2", sport=7111, dport=7001)
    excluded = udp_exchange(lab, b"x", b"x", sport=7112, dport=7002)
    # The same 5-tuple again: the flow is still open in the table, but its packets are filtered now.
    assert udp_exchange(lab, b"f2", b"f2", sport=7102, dport=7002) == filtered_later
    settle(lab)
    assert rec.stop() == 0 and rec.pid == pid
    records = rec.records()
    for key in (kept, kept2):
        assert (only(records, key)["spkts"], only(records, key)["dpkts"]) == (1, 1)
    assert (only(records, filtered_later)["spkts"], only(records, filtered_later)["dpkts"]) == (1, 1)
    assert not [r for r in records if key_of(r) == excluded]


def test_ring_holds_headers_only_with_the_default_filter(lab, recorder):
    """capture.snaplen (128) is enforced in the kernel even with no BPF filter, so the ring holds
    headers, not whole frames: a burst arriving while the recorder cannot read (SIGSTOP) fits."""
    rec = recorder(config={"capture": {"ring_bytes": 4 << 20}})   # 16 blocks of 256 KiB
    burst = 8000           # 1442-byte frames: about 2,900 fit whole, all fit as 128-byte snaps
    before = link_counters(lab, lab.h2)["rx_packets"]
    rec.signal(signal.SIGSTOP)
    try:
        send_udp_burst(lab, burst, size=1400)
    finally:
        rec.signal(signal.SIGCONT)
    settle(lab)
    crossed = link_counters(lab, lab.h2)["rx_packets"] - before
    assert crossed >= burst, "the lab itself lost packets"
    assert rec.stop() == 0
    status = rec.status()
    assert status["kernel_drops"] == 0, f"{status['kernel_drops']} of the burst dropped, {status['packets']} kept"
    assert status["packets"] >= crossed
