#!/bin/bash
# Build the flowtap appliance image, or a root file system with flowtap installed (for tests).
#
#   image/build.sh [--arch arm64|amd64] [--flavour raspios|debian] [--rootfs-only] OUT_DIR
#
#   --arch arm64        the Raspberry Pi 4/5 image (default)
#   --arch amd64        the same image for a PC or a virtual machine (linux-image-amd64; flavour
#                       debian): boot partition with the kernel, initrd and cmdline.txt, booted by
#                       QEMU's direct kernel boot in tests/test_boot.py; with --rootfs-only, the
#                       test root file system for this machine
#   --flavour raspios   Debian bookworm + the Raspberry Pi OS archive (its kernels for Pi 4 and
#                       Pi 5, firmware, rpi-eeprom): the product (default for arm64)
#   --flavour debian    Debian bookworm only (raspi-firmware, linux-image-arm64): Pi 4 only
#   --rootfs-only       stop after installing flowtap: OUT_DIR is the root file system
#   --cache DIR         keep bootstrapped base trees here (default $FLOWTAP_IMAGE_CACHE or
#                       /var/cache/flowtap-image); flowtap itself is installed afresh every run
#
# Environment (pin these for a reproducible build; image/README.md):
#   MIRROR            Debian mirror, e.g. a snapshot: http://snapshot.debian.org/archive/debian/20250601T000000Z
#   SECURITY_MIRROR   Debian security mirror ("none": leave out), same snapshot idea
#   RPI_MIRROR        Raspberry Pi OS archive (flavour raspios)
#   RPI_KEYRING       its signing key (raspberrypi-archive-keyring.gpg), needed for flavour raspios
#   SOURCE_DATE_EPOCH timestamps in the image (default: the last commit's time)
#
# Needs root, mmdebstrap, and for a foreign --arch qemu-user-static with binfmt_misc registered;
# for the image also dosfstools, mtools, e2fsprogs and fdisk. No Docker.
set -euo pipefail

ARCH=arm64
FLAVOUR=
ROOTFS_ONLY=0
CACHE=${FLOWTAP_IMAGE_CACHE:-/var/cache/flowtap-image}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
RPI_MIRROR=${RPI_MIRROR:-http://archive.raspberrypi.com/debian}
RPI_KEYRING=${RPI_KEYRING:-/usr/share/keyrings/raspberrypi-archive-keyring.gpg}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
say() { printf '\033[1mbuild:\033[0m %s\n' "$*" >&2; }
die() { printf 'build: error: %s\n' "$*" >&2; exit 1; }

OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH=${2:?}; shift ;;
        --flavour|--flavor) FLAVOUR=${2:?}; shift ;;
        --rootfs-only) ROOTFS_ONLY=1 ;;
        --cache) CACHE=${2:?}; shift ;;
        -h|--help) usage 0 ;;
        -*) printf 'unknown option: %s\n' "$1" >&2; usage 2 ;;
        *) [ -z "$OUT" ] || usage 2; OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || usage 2
[ "$(id -u)" = 0 ] || die "run as root (chroot, mounts, file ownership)"
case "$ARCH" in arm64|amd64) ;; *) die "--arch must be arm64 or amd64" ;; esac
# amd64 has no Raspberry Pi OS: Debian's kernel, nothing else.
[ -n "$FLAVOUR" ] || { [ "$ARCH" = arm64 ] && FLAVOUR=raspios || FLAVOUR=debian; }
case "$FLAVOUR" in raspios|debian) ;; *) die "--flavour must be raspios or debian" ;; esac
[ "$ARCH" = arm64 ] || [ "$FLAVOUR" = debian ] || die "--arch amd64 is flavour debian only"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap)"

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$SRC" log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export LC_ALL=C.UTF-8 TZ=UTC
HOST_ARCH=$(dpkg --print-architecture)
if [ "$ARCH" != "$HOST_ARCH" ]; then
    qemu=/proc/sys/fs/binfmt_misc/qemu-aarch64
    [ -e "$qemu" ] || die "running $ARCH binaries needs qemu-user-static registered in binfmt_misc ($qemu): image/README.md"
fi

WORK=$(mktemp -d /tmp/flowtap-build.XXXXXX)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$CACHE"

# Run a command in a root tree with /proc, /sys and /dev, in a private mount namespace: the
# mounts disappear with the command, whatever happens to it.
in_root() {
    local root=$1; shift
    # shellcheck disable=SC2016  # $1, $root and $@ belong to the inner shell
    unshare --mount --propagation private sh -ec '
        root=$1; shift
        mount -t proc proc "$root/proc"; mount -t sysfs sysfs "$root/sys"
        mount --rbind /dev "$root/dev"
        cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
        exec chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"' sh "$root" "$@"
}

# Bootstrap (or reuse) a base tree: Debian packages only, no flowtap. Cached by what it contains.
base_tree() {   # base_tree NAME "PACKAGES" DEST
    local name=$1 pkgs=$2 dest=$3 key tarball
    local sources=("deb $MIRROR $SUITE main non-free-firmware" "deb $MIRROR $SUITE-updates main non-free-firmware")
    [ "$SECURITY_MIRROR" = none ] || sources+=("deb $SECURITY_MIRROR $SUITE-security main non-free-firmware")
    local extra=()
    if [ "$name" = image ] && [ "$FLAVOUR" = raspios ]; then
        [ -r "$RPI_KEYRING" ] || die "flavour raspios needs the Raspberry Pi archive key: RPI_KEYRING=$RPI_KEYRING"
        sources+=("deb [signed-by=/usr/share/keyrings/raspberrypi-archive-keyring.gpg] $RPI_MIRROR $SUITE main")
        extra=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg --keyring="$RPI_KEYRING"
               --setup-hook="mkdir -p \"\$1/usr/share/keyrings\" && cp $RPI_KEYRING \"\$1/usr/share/keyrings/raspberrypi-archive-keyring.gpg\"")
    fi
    key=$(printf '%s\n' "$name" "$ARCH" "$SUITE" "$pkgs" "${sources[@]}" | sha256sum | cut -c1-16)
    tarball="$CACHE/$name-$ARCH-$SUITE-$key.tar"
    if [ ! -s "$tarball" ]; then
        say "bootstrapping $name ($ARCH, $SUITE) into $tarball"
        mmdebstrap --variant=minbase --format=tar --architectures="$ARCH" --include="${pkgs// /,}" \
            --aptopt='Acquire::Retries "3"' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*/changelog*' \
            "${extra[@]}" "$SUITE" "$tarball.part" "${sources[@]}"
        mv "$tarball.part" "$tarball"
        # Keep one base tree per name and architecture: older package lists are stale.
        find "$CACHE" -maxdepth 1 -name "$name-$ARCH-$SUITE-*.tar" ! -path "$tarball" -delete
    else
        say "reusing $tarball"
    fi
    mkdir -p "$dest"
    tar -C "$dest" -xpf "$tarball" --numeric-owner
}

# The source tree to build and install from, without development files.
copy_source() {   # copy_source DEST
    mkdir -p "$1"
    tar -C "$SRC" -cf - --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
        --exclude='*.so' --exclude='*.o' --exclude=appliance/_native.c --exclude=__pycache__ \
        --exclude=.pytest_cache --exclude=.benchmarks --exclude=bench --exclude=tests \
        --exclude=hw . | tar -C "$1" -xf -
}

# --- 1. wheels for the target: flowtap (C extension compiled for ARCH) and its dependencies ------
WHEELS=$WORK/wheels
mkdir -p "$WHEELS"
copy_source "$WORK/src"
host_python_ok=0
if [ "$ARCH" = "$HOST_ARCH" ] && /usr/bin/python3 -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
        && [ -e /usr/include/pcap/pcap.h ] && [ -e /usr/include/systemd/sd-daemon.h ]; then
    host_python_ok=1
fi
if [ "$host_python_ok" = 1 ]; then
    # Same architecture and the same Debian Python as the target: build here.
    say "building wheels on this machine (Debian's python3, $ARCH)"
    /usr/bin/python3 -m venv "$WORK/buildvenv"
    "$WORK/buildvenv/bin/pip" -q --disable-pip-version-check wheel --use-pep517 -w "$WHEELS" "$WORK/src[systemd]"
else
    # Another architecture: compile inside a builder tree of the target architecture (qemu-user),
    # so the C extension and systemd-python are built against the target's libraries. The
    # compiler stays in the builder; the image never gets one.
    say "building wheels in a $ARCH builder tree (qemu-user-static)"
    base_tree builder "build-essential pkg-config python3-dev python3-venv libpcap-dev libsqlite3-dev libsystemd-dev ca-certificates" "$WORK/builder"
    cp -a "$WORK/src" "$WORK/builder/tmp/src"
    # The builder trusts the certificates this host trusts (e.g. a proxy's CA) for PyPI; the
    # builder is thrown away and nothing of it reaches the image.
    cp -L /etc/ssl/certs/ca-certificates.crt "$WORK/builder/etc/ssl/certs/ca-certificates.crt"
    # shellcheck disable=SC2016  # expanded inside the builder
    in_root "$WORK/builder" sh -ec 'python3 -m venv /tmp/v
        export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
        /tmp/v/bin/pip -q --disable-pip-version-check wheel --use-pep517 -w /tmp/wheels "/tmp/src[systemd]"'
    cp "$WORK/builder/tmp/wheels/"*.whl "$WHEELS/"
    rm -rf "$WORK/builder"
fi
find "$WHEELS" -name '*.whl' -printf '  wheel: %f\n' | sort >&2

# --- 2. the root file system ----------------------------------------------------------------------
RUNTIME="python3 python3-venv libpcap0.8 libsqlite3-0 systemd iproute2 procps nginx openssl"
if [ "$ROOTFS_ONLY" = 1 ]; then
    ROOT=$OUT
    [ ! -e "$ROOT" ] || [ -z "$(ls -A "$ROOT")" ] || die "$ROOT exists and is not empty"
    base_tree rootfs "$RUNTIME" "$ROOT"
else
    ROOT=$WORK/rootfs
    # busybox: the initramfs's tools; without it initramfs-tools falls back to klibc, which has no
    # grep, and overlayroot's boot script fails (the read-only root never happens).
    IMAGE_PKGS="$RUNTIME systemd-sysv udev dbus kmod systemd-timesyncd fake-hwclock openssh-server \
        overlayroot busybox initramfs-tools cloud-guest-utils e2fsprogs fdisk ethtool tcpdump wpasupplicant \
        iw ca-certificates less wireless-regdb"
    if [ "$ARCH" = amd64 ]; then
        IMAGE_PKGS="$IMAGE_PKGS linux-image-amd64"       # a PC or a VM: no Pi firmware
    elif [ "$FLAVOUR" = raspios ]; then
        IMAGE_PKGS="$IMAGE_PKGS firmware-brcm80211 raspberrypi-archive-keyring raspi-firmware linux-image-rpi-v8 linux-image-rpi-2712 rpi-eeprom"
    else
        IMAGE_PKGS="$IMAGE_PKGS firmware-brcm80211 raspi-firmware linux-image-arm64"
    fi
    base_tree image "$IMAGE_PKGS" "$ROOT"
fi

# --- 3. flowtap, installed the way a Pi owner would (image/install.sh), from the wheels ----------
say "installing flowtap into the root file system"
mkdir -p "$ROOT/tmp/flowtap-src"
cp -a "$WORK/src/." "$ROOT/tmp/flowtap-src/"
cp -a "$WHEELS" "$ROOT/tmp/flowtap-src/wheels"
in_root "$ROOT" sh /tmp/flowtap-src/image/install.sh --wheelhouse /tmp/flowtap-src/wheels --network --no-start
rm -rf "$ROOT/tmp/flowtap-src"

# --- 4. appliance policy: locked root, no compiler, nothing cached -------------------------------
in_root "$ROOT" usermod -p '!*' root
for cc in gcc cc c++ g++ clang tcc; do
    [ ! -e "$ROOT/usr/bin/$cc" ] || die "a compiler ($cc) got into the image"
done
rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log \
    "$ROOT"/root/.cache "$ROOT"/etc/resolv.conf
: > "$ROOT/etc/machine-id"     # "uninitialized": systemd makes one at boot (first-boot semantics)

if [ "$ROOTFS_ONLY" = 1 ]; then
    say "root file system ready: $ROOT"
    exit 0
fi

# --- 5. the image's own files: read-only root, data partition, first boot, SSH off -----------------
say "appliance files (overlayroot, data partition, first boot)"
install -m 0755 "$HERE/files/flowtap-firstboot" "$ROOT/usr/local/sbin/flowtap-firstboot"
install -m 0644 "$HERE/files/flowtap-firstboot.service" "$ROOT/usr/local/lib/systemd/system/"
install -m 0644 "$HERE/files/fstab" "$ROOT/etc/fstab"
install -m 0644 "$HERE/files/overlayroot.local.conf" "$ROOT/etc/overlayroot.local.conf"
install -m 0644 "$HERE/files/sshd-flowtap.conf" "$ROOT/etc/ssh/sshd_config.d/flowtap.conf"
install -d "$ROOT/etc/systemd/system/fake-hwclock.service.d" "$ROOT/etc/systemd/journald.conf.d" \
    "$ROOT/usr/local/lib/systemd/system/flowtap-recorder.service.d" "$ROOT/data"
install -m 0644 "$HERE/files/fake-hwclock-data.conf" "$ROOT/etc/systemd/system/fake-hwclock.service.d/data.conf"
install -m 0644 "$HERE/files/journald-volatile.conf" "$ROOT/etc/systemd/journald.conf.d/flowtap.conf"
install -m 0644 "$HERE/files/recorder-data.conf" "$ROOT/usr/local/lib/systemd/system/flowtap-recorder.service.d/data.conf"
install -D -m 0644 "$HERE/files/flowtap-ports.link" "$ROOT/etc/systemd/network/10-flowtap-ports.link"
echo 'FILE=/data/fake-hwclock.data' > "$ROOT/etc/default/fake-hwclock"
echo flowtap > "$ROOT/etc/hostname"
# The console login screen shows the setup token (flowtap-firstboot writes /run/issue.d). agetty
# reads /run/issue.d only when there is no /etc/issue, and Debian has one: a link from
# /etc/issue.d, which agetty does read, brings it in.
install -d "$ROOT/etc/issue.d"
ln -sf /run/issue.d/50-flowtap.issue "$ROOT/etc/issue.d/50-flowtap.issue"
rm -f "$ROOT"/etc/ssh/ssh_host_*            # every sensor makes its own on first boot
in_root "$ROOT" systemctl disable ssh.service
in_root "$ROOT" systemctl enable flowtap-firstboot.service systemd-networkd.service systemd-timesyncd.service

# Kernel command line and firmware settings. Partition ids are fixed by SOURCE_DATE_EPOCH.
DISKID=$(printf '%08x' "$SOURCE_DATE_EPOCH" | cut -c1-8)
CMDLINE="console=serial0,115200 console=tty1 root=PARTUUID=$DISKID-02 rootfstype=ext4 fsck.repair=yes rootwait net.ifnames=0 quiet"
if [ "$ARCH" = amd64 ]; then
    # No firmware reads the boot partition on a PC: it holds the kernel, the initramfs and the
    # command line for whatever boots it (QEMU's -kernel/-initrd/-append in tests/test_boot.py).
    # The last console= is /dev/console: the serial port, where a VM's log is kept.
    echo "${CMDLINE/console=serial0,115200 console=tty1/console=tty0 console=ttyS0,115200}" > "$ROOT/etc/flowtap-cmdline.txt"
elif [ "$FLAVOUR" = raspios ]; then
    # Raspberry Pi OS: the firmware reads these two files as they are (auto_initramfs=1 picks the
    # initramfs that matches the kernel, which overlayroot needs).
    echo "$CMDLINE" > "$ROOT/boot/firmware/cmdline.txt"
    install -m 0644 "$HERE/files/config.txt" "$ROOT/boot/firmware/config.txt"
else
    # Debian's raspi-firmware writes config.txt and cmdline.txt itself from /etc/default, each
    # time the initramfs is rebuilt (its z50-raspi-firmware hook).
    printf 'ROOTPART=PARTUUID=%s-02\nCONSOLES="serial0,115200 tty1"\n' "$DISKID" > "$ROOT/etc/default/raspi-firmware"
    echo "net.ifnames=0 quiet" > "$ROOT/etc/default/raspi-extra-cmdline"
    grep -v -e '^arm_64bit' -e '^auto_initramfs' "$HERE/files/config.txt" > "$ROOT/etc/default/raspi-firmware-custom"
fi
in_root "$ROOT" update-initramfs -u -k all
if [ "$ARCH" = amd64 ]; then
    install -d "$ROOT/boot/firmware"
    # One kernel: the newest linux-image-amd64 brought.
    kver=$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -1)
    [ -n "$kver" ] || die "no kernel in $ROOT/boot"
    cp "$ROOT/boot/vmlinuz-$kver" "$ROOT/boot/firmware/vmlinuz"
    cp "$ROOT/boot/initrd.img-$kver" "$ROOT/boot/firmware/initrd.img"
    mv "$ROOT/etc/flowtap-cmdline.txt" "$ROOT/boot/firmware/cmdline.txt"
fi

# The persistent half: /data holds archives, the config, SSH keys and the saved clock.
DATA=$WORK/data
uid() { in_root "$ROOT" id -u "$1"; }
gid() { in_root "$ROOT" getent group "$1" | cut -d: -f3; }
install -d -m 0750 -o "$(uid flowtap)" -g "$(gid flowtap)" "$DATA/flowtap" "$DATA/flowtap/archive"
install -d -m 0700 -o "$(uid flowtap-web)" -g "$(gid flowtap-web)" "$DATA/flowtap/web"
install -d -m 0775 -o 0 -g "$(gid flowtap-web)" "$DATA/etc-flowtap"
install -d -m 0700 "$DATA/ssh"
install -d -m 0755 "$DATA/timesync"
# The default config: the page listens on 127.0.0.1:8080 behind nginx, which serves https on
# the management interface (br0 and its ports have no address).
cp "$ROOT/etc/flowtap/flowtap.toml" "$DATA/etc-flowtap/flowtap.toml"
chown 0:"$(gid flowtap-web)" "$DATA/etc-flowtap/flowtap.toml"; chmod 0664 "$DATA/etc-flowtap/flowtap.toml"
rm -rf "$ROOT/var/lib/flowtap/"* "$ROOT/etc/flowtap/"*   # mount points for the /data bind mounts

# --- 6. boot partition, partitions, disk image ------------------------------------------------------
say "assembling the disk image"
find "$ROOT" "$DATA" -xdev -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} + 2>/dev/null || true

mib() { echo $(( ($1 + 1048575) / 1048576 )); }
BOOT_MIB=512
DATA_MIB=256                    # grown to the rest of the card on first boot
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
mkfs.vfat -F 32 -n BOOTFS -i "$DISKID" -C "$WORK/boot.img" $((BOOT_MIB * 1024)) >/dev/null
mcopy -s -m -i "$WORK/boot.img" "$ROOT"/boot/firmware/* ::
rm -rf "${ROOT:?}/boot/firmware/"*          # a mount point on the appliance
ROOT_MIB=$(( $(mib "$(du -sb "$ROOT" | cut -f1)") * 13 / 10 + 256 ))
ROOT_UUID=$(printf '%s' "root-$SOURCE_DATE_EPOCH" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
DATA_UUID=$(printf '%s' "data-$SOURCE_DATE_EPOCH" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
mkfs.ext4 -q -L rootfs -U "$ROOT_UUID" -E "hash_seed=$ROOT_UUID,root_owner=0:0" -d "$ROOT" "$WORK/root.img" "${ROOT_MIB}M"
mkfs.ext4 -q -L FLOWTAP-DATA -U "$DATA_UUID" -E "hash_seed=$DATA_UUID,root_owner=0:0" -d "$DATA" "$WORK/data.img" "${DATA_MIB}M"

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml")
mkdir -p "$OUT"
IMG="$OUT/flowtap-$VERSION-$FLAVOUR-$ARCH.img"
TOTAL_MIB=$((4 + BOOT_MIB + ROOT_MIB + DATA_MIB + 1))
rm -f "$IMG"; truncate -s "${TOTAL_MIB}M" "$IMG"
sfdisk -q "$IMG" <<EOF
label: dos
label-id: 0x$DISKID
unit: sectors
start=$((4 * 2048)), size=$((BOOT_MIB * 2048)), type=c, bootable
start=$(((4 + BOOT_MIB) * 2048)), size=$((ROOT_MIB * 2048)), type=83
start=$(((4 + BOOT_MIB + ROOT_MIB) * 2048)), size=$((DATA_MIB * 2048)), type=83
EOF
dd if="$WORK/boot.img" of="$IMG" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$WORK/root.img" of="$IMG" bs=1M seek=$((4 + BOOT_MIB)) conv=notrunc,sparse status=none
dd if="$WORK/data.img" of="$IMG" bs=1M seek=$((4 + BOOT_MIB + ROOT_MIB)) conv=notrunc,sparse status=none
# shellcheck disable=SC2016  # dpkg-query's own format
in_root "$ROOT" dpkg-query -W -f='${Package} ${Version}\n' > "$IMG.packages" 2>/dev/null || true
(cd "$OUT" && sha256sum "$(basename "$IMG")" > "$(basename "$IMG").sha256")
say "image: $IMG ($TOTAL_MIB MiB; write with: dd if=$IMG of=/dev/sdX bs=4M conv=fsync)"
