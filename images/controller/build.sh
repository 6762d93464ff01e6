#!/usr/bin/env bash
# Build the controller image of the newest ansible-core, with no container registry: Debian
# trixie (Python 3.13) from Debian packages by mmdebstrap, the pinned Python tools of
# tests/compat/newest-core.txt installed from PyPI into the virtualenv /opt/controller, and
# `docker import` to turn the root filesystem into an image. images/controller/run runs commands
# in it against this host's Docker engine; `scripts/test compat` runs sanity, lint and the
# Molecule scenarios there.
#
#   images/controller/build.sh
#
# The image is tagged dbtools-galera-controller:trixie-<recipe hash> and
# dbtools-galera-controller:trixie. The recipe hash covers this script, packages.txt and
# tests/compat/newest-core.txt, so an unchanged recipe reuses the image and any change to it
# rebuilds. Prints the image reference on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
requirements=$root/tests/compat/newest-core.txt
suite=trixie
repo=dbtools-galera-controller
venv=/opt/controller
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# pip inside the build trusts what this host trusts (a TLS-inspecting proxy's CA included); the
# bundle is only used during the build and is not left in the image.
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}

hash=$( (echo "$suite"; cd "$here" && cat build.sh packages.txt; cat "$requirements") | sha256sum | cut -c1-12)
ref="$repo:$suite-$hash"
# scripts/lib.sh's setup_venv reinstalls a virtualenv whose stamp differs from this one.
stamp=$(sha256sum "$requirements" | cut -c1-16)

if docker image inspect "$ref" >/dev/null 2>&1; then
    echo "image $ref is up to date" >&2
    docker tag "$ref" "$repo:$suite"
    echo "$ref"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "installing mmdebstrap (needs root and Debian's package archive)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >&2
fi

packages=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/packages.txt" | awk '{ print $1 }' | paste -sd, -)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The install step runs in the chroot with a clean environment: this host's SSL_CERT_FILE,
# PIP_CERT or PIP_FIND_LINKS name paths that mean something else there. Index and proxy
# settings are kept; pip trusts this host's CA bundle (a TLS-inspecting proxy's CA included),
# which is only used during the build and is not left in the image.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
pip_env="PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1"
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT \
        http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!name:-}" ] && pip_env+=" $name=$(quote "${!name}")"
done
ca_hooks=()
if [ -s "$host_ca" ]; then
    ca_hooks=(--customize-hook="upload '$host_ca' /tmp/host-ca.crt")
    pip_env+=" SSL_CERT_FILE=/tmp/host-ca.crt PIP_CERT=/tmp/host-ca.crt"
fi
cat > "$work/install.sh" <<INSTALL
set -eu
python3 -m venv $venv
env -i $pip_env $venv/bin/pip install --quiet -r /tmp/requirements.txt
$venv/bin/ansible --version
rm -rf /root/.ansible
echo $stamp > $venv/.requirements
INSTALL
echo "building $ref from Debian $suite and tests/compat/newest-core.txt ..." >&2
started=$(date +%s)
mmdebstrap --variant=apt --quiet \
    --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="upload '$requirements' /tmp/requirements.txt" \
    "${ca_hooks[@]}" \
    --customize-hook="upload '$work/install.sh' /tmp/install.sh" \
    --customize-hook='chroot "$1" sh /tmp/install.sh' \
    --customize-hook='rm -f "$1/tmp/requirements.txt" "$1/tmp/host-ca.crt" "$1/tmp/install.sh"' \
    --customize-hook='chroot "$1" sh -c "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; : > /etc/machine-id"' \
    "$suite" "$work/rootfs.tar" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" >&2

docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV VIRTUAL_ENV=$venv" \
    --change "ENV PATH=$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "LABEL org.dbtools.galera.recipe=$hash org.dbtools.galera.suite=$suite" \
    "$work/rootfs.tar" "$ref" >&2
docker tag "$ref" "$repo:$suite"
echo "built $ref in $(( $(date +%s) - started ))s" >&2
echo "$ref"
