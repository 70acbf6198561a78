#!/bin/sh
# Install flowtap on a Debian 12 or Raspberry Pi OS (bookworm) machine, or into an image's root
# file system from inside a chroot. One command: `sudo make install` (or this script).
#
#   image/install.sh [--network] [--wheelhouse DIR] [--no-start] [--prefix /opt/flowtap]
#
# What it does, in order (every step can run again: re-running upgrades in place):
#   1. apt: the runtime packages (and, without --wheelhouse, what building the C extension needs);
#   2. a virtualenv in PREFIX (/opt/flowtap) with flowtap and its Python dependencies
#      (from --wheelhouse DIR without network access, else built from this source tree);
#   3. systemd units, sysusers.d, tmpfiles.d, sysctl.d, the watchdog drop-in into
#      /usr/local/lib/... (admins override them in /etc as usual), then the users and directories;
#   4. --network: the systemd-networkd files (br0 from eth0 + eth1, management on eth2/wlan0), and
#      systemd-networkd enabled. Off by default: it takes eth0 away from whatever manages it now;
#   5. /etc/flowtap/flowtap.toml, only if there is none (an existing config is never overwritten);
#   6. nginx in front of the page (TLS on 443 with the box's own certificate, made at first start
#      by flowtap-tls-cert.service), replacing Debian's default site;
#   7. enables flowtap-recorder, flowtap-web, flowtap-alerts (idle until [alerts] files are set),
#      flowtap-recorder-reload.path, flowtap-tls-cert and nginx, and (re)starts them unless
#      --no-start or when there is no running systemd (a chroot).
set -eu

PREFIX=/opt/flowtap
NETWORK=0
START=1
WHEELHOUSE=
SRC=$(cd "$(dirname "$0")/.." && pwd)
UNITDIR=/usr/local/lib/systemd/system
LIBDIR=/usr/local/lib
UNITS="flowtap-recorder.service flowtap-web.service flowtap-alerts.service flowtap-recorder-reload.path flowtap-recorder-reload.service flowtap-tls-cert.service"

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
say() { printf 'flowtap install: %s\n' "$*"; }
die() { printf 'flowtap install: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --network) NETWORK=1 ;;
        --no-start) START=0 ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        -h|--help) usage 0 ;;
        *) printf 'unknown option: %s\n' "$1" >&2; usage 2 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || die "run as root (sudo make install)"
command -v apt-get >/dev/null || die "needs a Debian-based system (apt-get)"

# A running systemd (not a chroot, not a container build): only then start services.
if [ -d /run/systemd/system ] && ! systemd-detect-virt --chroot >/dev/null 2>&1; then
    LIVE=1
else
    LIVE=0
fi

# --- 1. packages --------------------------------------------------------------------------------
RUNTIME="python3 python3-venv libpcap0.8 systemd iproute2 procps nginx openssl"
BUILD="build-essential pkg-config python3-dev libpcap-dev libsystemd-dev"
need=
for p in $RUNTIME $( [ -n "$WHEELHOUSE" ] || echo "$BUILD" ); do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    say "apt-get install$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $need
fi

# --- 2. the virtualenv ----------------------------------------------------------------------------
say "virtualenv in $PREFIX"
[ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
if [ -n "$WHEELHOUSE" ]; then
    "$PREFIX/bin/pip" install -q --no-index --find-links "$WHEELHOUSE" --upgrade "flowtap[systemd]"
else
    "$PREFIX/bin/pip" install -q --upgrade pip
    "$PREFIX/bin/pip" install -q --upgrade "${SRC}[systemd]"
fi
"$PREFIX/bin/python" -c "import appliance._native" || die "the native module does not load"

# --- 3. units, users, directories, kernel settings ----------------------------------------------
say "systemd units into $UNITDIR"
install -d -m 0755 "$UNITDIR" "$UNITDIR/flowtap-recorder.service.d" "$LIBDIR/sysusers.d" \
    "$LIBDIR/tmpfiles.d" "$LIBDIR/sysctl.d" "$LIBDIR/systemd/system.conf.d" "$PREFIX/doc"
for u in $UNITS; do
    install -m 0644 "$SRC/systemd/$u" "$UNITDIR/$u"
done
install -m 0644 "$SRC/systemd/flowtap-recorder.service.d/export.conf.example" \
    "$UNITDIR/flowtap-recorder.service.d/export.conf.example"
install -m 0644 "$SRC/systemd/sysusers.d/flowtap.conf" "$LIBDIR/sysusers.d/flowtap.conf"
install -m 0644 "$SRC/systemd/tmpfiles.d/flowtap.conf" "$LIBDIR/tmpfiles.d/flowtap.conf"
install -m 0644 "$SRC/systemd/sysctl.d/90-flowtap.conf" "$LIBDIR/sysctl.d/90-flowtap.conf"
install -m 0644 "$SRC/systemd/system.conf.d/flowtap-watchdog.conf" \
    "$LIBDIR/systemd/system.conf.d/flowtap-watchdog.conf"
install -m 0644 "$SRC/systemd/README.md" "$PREFIX/doc/systemd.md"
install -m 0755 "$SRC/systemd/flowtap-tls-cert" /usr/local/sbin/flowtap-tls-cert
systemd-sysusers flowtap.conf
systemd-tmpfiles --create flowtap.conf

# --- 4. network (optional) ----------------------------------------------------------------------
if [ "$NETWORK" = 1 ]; then
    say "systemd-networkd files: br0 = eth0 + eth1, management on eth2/wlan0"
    install -d -m 0755 "$LIBDIR/systemd/network"
    for f in "$SRC"/systemd/network/*; do
        install -m 0644 "$f" "$LIBDIR/systemd/network/$(basename "$f")"
    done
    # Raspberry Pi OS manages the ports with NetworkManager: leave them to systemd-networkd.
    if [ -d /etc/NetworkManager/conf.d ]; then
        printf '%s\n' '# flowtap: the bridge ports and br0 belong to systemd-networkd' '[keyfile]' \
            'unmanaged-devices=interface-name:eth0;interface-name:eth1;interface-name:br0' \
            > /etc/NetworkManager/conf.d/flowtap.conf
    fi
    systemctl enable systemd-networkd.service
fi

# --- 5. the configuration -----------------------------------------------------------------------
if [ -e /etc/flowtap/flowtap.toml ]; then
    say "keeping the existing /etc/flowtap/flowtap.toml"
else
    install -m 0664 -o root -g flowtap-web "$SRC/systemd/etc/flowtap.toml" /etc/flowtap/flowtap.toml
fi
"$PREFIX/bin/flowtap" record -c /etc/flowtap/flowtap.toml --check-config

# --- 6. nginx: TLS in front of the page ------------------------------------------------------------
say "nginx: https on 443 in front of the page (certificate made at first start)"
install -m 0644 "$SRC/systemd/nginx-flowtap.conf" /etc/nginx/conf.d/flowtap.conf
rm -f /etc/nginx/sites-enabled/default         # Debian's welcome page; port 80 stays closed

# --- 7. enable and start ------------------------------------------------------------------------
# flowtap-recorder-reload.service has no [Install]: the path unit starts it.
systemctl enable flowtap-recorder.service flowtap-web.service flowtap-alerts.service \
    flowtap-recorder-reload.path flowtap-tls-cert.service nginx.service
if [ "$LIVE" = 1 ]; then
    systemctl daemon-reload
    systemd-sysctl 90-flowtap.conf || true
    if [ "$START" = 1 ]; then
        [ "$NETWORK" = 0 ] || systemctl restart systemd-networkd.service
        systemctl start flowtap-tls-cert.service
        systemctl restart flowtap-recorder-reload.path flowtap-recorder.service flowtap-web.service \
            flowtap-alerts.service nginx.service
        say "started; status: systemctl status flowtap-recorder flowtap-web flowtap-alerts"
    fi
else
    say "no running systemd here (chroot): services enabled, not started"
fi
say "done: flowtap $("$PREFIX/bin/python" -c 'import appliance; print(appliance.__version__)') in $PREFIX"
