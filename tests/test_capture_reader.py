"""The capture-file read-ahead (native/sensor.c): a second thread reads and decodes the file in
blocks of 1024 packets; sensor_poll meters them one by one. Its contract is the single-threaded
one: poll's packet budget and until_us are exact across block boundaries, a read error comes after
what was read before it, a BPF filter must come before the reading, and closing mid-file joins the
thread (no hang, no leak: ASan runs the same code in `make asan`)."""
from __future__ import annotations

import time

import pytest

from appliance import capture
from appliance.capture import Capture, CaptureError, lib
from tests import pcapgen

PACKETS = 5000                      # almost five read-ahead blocks
STEP_US = 1000


@pytest.fixture(scope="module")
def udp_file(tmp_path_factory):
    """PACKETS one-packet UDP flows, 1 ms apart: packet i is at T0 + i ms."""
    t0 = int(pcapgen.T0 * 1e6)
    packets = [pcapgen.Packet(t0 + i * STEP_US,
                              pcapgen.frame("10.0.0.1", "10.0.1.1", pcapgen.PROTO_UDP,
                                            pcapgen.udp("10.0.0.1", "10.0.1.1", 1024 + i % 60000, 53, b"x" * (i % 50))))
               for i in range(PACKETS)]
    return pcapgen.write_pcap(tmp_path_factory.mktemp("reader") / "udp.pcap", packets), t0


def test_poll_budget_is_exact_across_blocks(udp_file):
    path, _ = udp_file
    with Capture.open_file(str(path)) as cap:
        seen = 0
        while (rc := cap.poll(700)) != lib.SENSOR_EOF:
            assert rc == min(700, PACKETS - seen)
            seen += rc
            assert cap.stats()["packets"] == seen
        assert seen == PACKETS
        assert cap.poll(700) == lib.SENSOR_EOF             # and stays at the end


@pytest.mark.parametrize("index", [0, 1, 1023, 1024, 1025, 2047, 2048, 4999])
def test_until_stops_right_after_the_first_packet_at_or_past_it(udp_file, index):
    path, t0 = udp_file
    until = t0 + index * STEP_US - STEP_US // 2 if index else t0     # between packets index-1 and index
    with Capture.open_file(str(path)) as cap:
        assert cap.poll(1_000_000, until_us=until) > 0
        assert cap.stats()["packets"] == index + 1
        assert cap.last_packet_us == t0 + index * STEP_US
        rest = 0
        while (rc := cap.poll(1_000_000)) != lib.SENSOR_EOF:
            rest += rc
        assert index + 1 + rest == PACKETS


def test_records_are_those_of_the_whole_file_whatever_the_budget(udp_file):
    path, _ = udp_file

    def records(budget: int) -> list[tuple]:
        out = []
        with Capture.open_file(str(path)) as cap:
            while cap.poll(budget) != lib.SENSOR_EOF:
                out += cap.drain_raw(cap.last_packet_us)
            cap.end_all(lib.SENSOR_CAUSE_SHUTDOWN)
            out += cap.drain_raw(cap.last_packet_us)
        return sorted(r[1:] for r in out)                  # seq follows the drain order

    whole = records(1_000_000)
    assert len(whole) == PACKETS
    assert records(1) == whole and records(1023) == whole


def test_a_filter_is_set_before_reading_and_refused_after(udp_file):
    path, _ = udp_file
    with Capture.open_file(str(path)) as cap:
        cap.set_filter("udp and src port 1024")
        while cap.poll() != lib.SENSOR_EOF:
            pass
        assert cap.stats()["packets"] == 1
    with Capture.open_file(str(path)) as cap:
        cap.poll(10)
        with pytest.raises(CaptureError, match="before the file is read"):
            cap.set_filter("tcp")


def test_a_read_error_comes_after_the_packets_before_it(udp_file, tmp_path):
    path, _ = udp_file
    data = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 3 // 4 + 7])          # ends inside a record
    metered = 0
    with Capture.open_file(str(cut)) as cap:
        with pytest.raises(CaptureError, match="truncated"):
            while cap.poll(500) != lib.SENSOR_EOF:
                metered = cap.stats()["packets"]
        metered = cap.stats()["packets"]
        assert cap.poll(500) == lib.SENSOR_EOF
    assert PACKETS * 3 // 4 - 2 <= metered < PACKETS


def test_closing_mid_file_joins_the_reader(tmp_path):
    """A reader blocked on a full ring must end when the handle closes."""
    big = tmp_path / "big.pcap"
    frame = pcapgen.frame("10.0.0.1", "10.0.1.1", pcapgen.PROTO_UDP, pcapgen.udp("10.0.0.1", "10.0.1.1", 1, 2, b""))
    with pcapgen.PcapWriter(str(big)) as w:
        for i in range(20 * 1024):
            w.write((int(pcapgen.T0 * 1e6) + i, frame))
    start = time.monotonic()
    for _ in range(20):
        cap = Capture.open_file(str(big))
        cap.poll(1)
        cap.close()
        Capture.open_file(str(big)).close()              # never polled: no thread to join
    assert time.monotonic() - start < 10
    assert capture.Capture.open_file(str(big)).poll(5) == 5
