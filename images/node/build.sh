#!/usr/bin/env bash
# Build the Galera node image from Debian packages, with no container registry:
# mmdebstrap writes a root filesystem tarball, `docker import` turns it into an image.
#
#   images/node/build.sh [bookworm|trixie] [tini|systemd]
#
# Suite default: bookworm, or $GALERA_SUITE. Init default: tini, the Molecule cluster's (no init system;
# galera-node starts the server). systemd: systemd is PID 1 and starts the server as Debian's
# mariadb.service does on a real host (tests/integration/test_systemd.py; the unit is disabled, so the
# test configures the node before its first start).
#
# The image is tagged dbtools-galera-node:<suite>-<recipe hash> and dbtools-galera-node:<suite>
# (with systemd: <suite>-systemd-<recipe hash> and <suite>-systemd).
# The recipe hash covers this directory, so an unchanged recipe reuses the image and
# any change to it rebuilds. Prints the image reference on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${1:-${GALERA_SUITE:-bookworm}}
repo=dbtools-galera-node
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

case "$suite" in
bookworm|trixie) ;;
*) echo "build.sh: unknown suite '$suite' (use bookworm or trixie)" >&2; exit 2 ;;
esac
init=${2:-tini}
case "$init" in
tini) flavor=$suite; extra=""
    changes=(--change 'ENTRYPOINT ["/usr/bin/tini", "--"]' --change 'CMD ["sleep", "infinity"]') ;;
systemd) flavor=$suite-systemd; extra=",systemd,systemd-sysv,dbus"
    changes=(--change 'ENTRYPOINT ["/sbin/init"]') ;;
*) echo "build.sh: unknown init '$init' (use tini or systemd)" >&2; exit 2 ;;
esac

hash=$( (echo "$suite $init"; cd "$here" && cat build.sh packages.txt galera.cnf galera-node) | sha256sum | cut -c1-12)
ref="$repo:$flavor-$hash"

if docker image inspect "$ref" >/dev/null 2>&1; then
    echo "image $ref is up to date" >&2
    docker tag "$ref" "$repo:$flavor"
    echo "$ref"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "installing mmdebstrap (needs root and Debian's package archive)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >&2
fi

packages=$(awk -v suite="$suite" '
    /^[[:space:]]*(#|$)/ { next }
    NF == 1 { print $1; next }
    { for (i = 2; i <= NF; i++) { s = $i; gsub(/[][]/, "", s); if (s == suite) { print $1; next } } }
' "$here/packages.txt" | paste -sd, -)$extra
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building $ref from Debian $suite ..." >&2
started=$(date +%s)
mmdebstrap --variant=apt --quiet \
    --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="upload '$here/galera.cnf' /etc/mysql/mariadb.conf.d/60-galera.cnf" \
    --customize-hook="upload '$here/galera-node' /usr/local/bin/galera-node" \
    --customize-hook='chroot "$1" chmod 0755 /usr/local/bin/galera-node' \
    --customize-hook='chroot "$1" sh -c "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; : > /etc/machine-id"' \
    --customize-hook="[ $init = tini ] || chroot \"\$1\" systemctl disable mariadb.service haproxy.service" \
    "$suite" "$work/rootfs.tar" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" >&2

docker import \
    "${changes[@]}" \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.dbtools.galera.recipe=$hash org.dbtools.galera.suite=$suite org.dbtools.galera.init=$init" \
    "$work/rootfs.tar" "$ref" >&2
docker tag "$ref" "$repo:$flavor"
echo "built $ref in $(( $(date +%s) - started ))s" >&2
echo "$ref"
