#!/bin/bash
# Measure, on a real Pi running flowtap inline, what the bridge forwards and what the recorder
# sees and drops, with the CPU it costs (hw/limits.md). Run as root on the Pi.
#
#   hw/measure.sh [--client HOST] --server ADDR [--seconds N] [--parallel N] [--udp-pps N] [--reverse]
#
#   --server ADDR   an iperf3 server ("iperf3 -s") on one side of the bridge
#   --client HOST   the host on the other side, reached by ssh, that runs "iperf3 -c ADDR";
#                   without it the script prints the command and waits for Enter
#   --seconds N     length of the run (default 30)
#   --parallel N    TCP streams (default 4)
#   --udp-pps N     instead of TCP: UDP, 64-byte payloads, N packets/s (the small-frame test)
#   --reverse       traffic in the other direction (iperf3 -R)
#   --bridge NAME   default br0;  --status FILE  default /run/flowtap/status.json
set -euo pipefail

BRIDGE=br0 STATUS=/run/flowtap/status.json SECONDS_RUN=30 PARALLEL=4 UDP_PPS=0 REVERSE='' CLIENT='' SERVER=''
while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVER=$2; shift ;;
        --client) CLIENT=$2; shift ;;
        --seconds) SECONDS_RUN=$2; shift ;;
        --parallel) PARALLEL=$2; shift ;;
        --udp-pps) UDP_PPS=$2; shift ;;
        --reverse) REVERSE=-R ;;
        --bridge) BRIDGE=$2; shift ;;
        --status) STATUS=$2; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$SERVER" ] || { echo "--server ADDR is required" >&2; exit 2; }
[ -d "/sys/class/net/$BRIDGE/brif" ] || { echo "$BRIDGE is not a bridge here" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
PORTS=$(ls "/sys/class/net/$BRIDGE/brif")

snapshot() {   # prints KEY VALUE lines: port counters, recorder status, /proc/stat per cpu
    local p
    for p in $PORTS; do
        for c in rx_packets rx_bytes tx_packets rx_dropped rx_missed_errors; do
            [ -r "/sys/class/net/$p/statistics/$c" ] && echo "$p.$c $(cat "/sys/class/net/$p/statistics/$c")"
        done
    done
    if [ -r "$STATUS" ]; then
        jq -r '"rec.packets \(.packets)\nrec.kernel_drops \(.kernel_drops)\nrec.interface_drops \(.interface_drops)"' "$STATUS"
        pid=$(jq -r .pid "$STATUS")
        # utime + stime of the recorder, in clock ticks (fields 14 and 15 of /proc/PID/stat)
        [ -r "/proc/$pid/stat" ] && awk '{print "rec.cpu_ticks", $14 + $15}' "/proc/$pid/stat"
    fi
    # cpuN user nice system idle iowait irq softirq
    awk '/^cpu[0-9]/ {print $1".busy", $2+$3+$4+$7+$8; print $1".softirq", $8; print $1".total", $2+$3+$4+$5+$6+$7+$8}' /proc/stat
    echo "time $(date +%s.%N)"
}

if [ "$UDP_PPS" -gt 0 ]; then
    # 64-byte UDP payloads at N packets/s: -b is bits/s of payload
    IPERF="iperf3 -c $SERVER -u -l 64 -b $((UDP_PPS * 64 * 8)) -t $SECONDS_RUN $REVERSE"
else
    IPERF="iperf3 -c $SERVER -P $PARALLEL -t $SECONDS_RUN $REVERSE"
fi

before=$(snapshot)
if [ -n "$CLIENT" ]; then
    echo "running on $CLIENT: $IPERF" >&2
    # shellcheck disable=SC2029  # expanded here on purpose: the command line is ours
    ssh "$CLIENT" "$IPERF" | tail -4 >&2
else
    echo "start now, on the host across the bridge from $SERVER:  $IPERF" >&2
    echo "then press Enter here when it has finished" >&2
    read -r _
fi
after=$(snapshot)

# Differences, then the table.
join <(sort <<<"$before") <(sort <<<"$after") | awk -v ports="$PORTS" -v hz="$(getconf CLK_TCK)" '
    { d[$1] = $3 - $2 }
    END {
        dt = d["time"]; if (dt <= 0) dt = 1
        printf "interval: %.1f s\n\n", dt
        printf "%-10s %12s %12s %10s %10s\n", "port", "rx Mbit/s", "rx frames/s", "rx drop", "rx missed"
        n = split(ports, p, " ")
        for (i = 1; i <= n; i++)
            printf "%-10s %12.1f %12.0f %10d %10d\n", p[i], d[p[i]".rx_bytes"] * 8 / dt / 1e6,
                d[p[i]".rx_packets"] / dt, d[p[i]".rx_dropped"], d[p[i]".rx_missed_errors"]
        printf "\nrecorder: %d frames seen (%.0f/s), kernel drops %d, interface drops %d\n",
            d["rec.packets"], d["rec.packets"] / dt, d["rec.kernel_drops"], d["rec.interface_drops"]
        printf "recorder CPU: %.1f %% of one core\n", 100 * d["rec.cpu_ticks"] / hz / dt
        printf "\n%-6s %8s %9s\n", "cpu", "busy %", "softirq %"
        for (k in d) if (k ~ /^cpu[0-9]+\.total$/) {
            c = k; sub(/\.total/, "", c)
            printf "%-6s %8.1f %9.1f\n", c, 100 * d[c".busy"] / d[k], 100 * d[c".softirq"] / d[k]
        }
    }'
