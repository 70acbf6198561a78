#!/bin/sh
# Install the Debian packages a step needs (deps/packages.txt): `deps/install.sh build` for make
# build/run, `deps/install.sh test` for make test (build's packages too). Installs what is missing
# when run as root; otherwise prints the one line to run and fails. Does nothing when all are there.
set -eu
step=${1:?usage: deps/install.sh build|test}
here=$(dirname "$0")
case $step in
    build) want='^build ' ;;
    test) want='^(build|test) ' ;;
    *) echo "deps/install.sh: unknown step '$step' (build or test)" >&2; exit 2 ;;
esac
pkgs=$(grep -E "$want" "$here/packages.txt" | awk '{printf "%s ", $2}')
if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps/install.sh: not a Debian system; install the equivalents of: $pkgs" >&2
    exit 0
fi
missing=
for p in $pkgs; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing="$missing $p"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "flowtap needs Debian packages that are missing; run:" >&2
    echo "    sudo apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi
echo "deps/install.sh: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086 # one word per package
apt-get install -y -q --no-install-recommends $missing
