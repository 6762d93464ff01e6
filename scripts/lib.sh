# Shared setup for scripts/test and scripts/demo (sourced, not run).
# Everything is installed inside the checkout: a virtualenv in .venv with the pinned
# tools of requirements-dev.txt, the collection linked into .build/collections, and
# the node image built from Debian packages (images/node/build.sh).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The virtualenv and the pinned tools it holds; scripts/test compat swaps both for the
# oldest ansible-core (tests/compat/oldest-core.txt). In the controller container
# (images/controller/run) GALERA_VENV and GALERA_REQUIREMENTS name the image's own virtualenv
# of tests/compat/newest-core.txt.
VENV=${GALERA_VENV:-$ROOT/.venv}
REQUIREMENTS=${GALERA_REQUIREMENTS:-$ROOT/requirements-dev.txt}
BUILD=$ROOT/.build
export GALERA_SUITE=${GALERA_SUITE:-bookworm}

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_docker() {
    command -v docker >/dev/null 2>&1 || die "docker is not installed; install Docker Engine first (see CONTRIBUTING.md, Prerequisites)"
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer ('docker info' fails); start it or run as a user allowed to use it"
}

setup_venv() {
    local python=${PYTHON:-python3} stamp
    command -v "$python" >/dev/null 2>&1 || die "$python not found; Python 3.11 is required"
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' \
        || die "$python is $("$python" -V 2>&1); Python 3.11 or newer is required"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtualenv $VENV"
        "$python" -m venv "$VENV" 2>/dev/null || {
            command -v apt-get >/dev/null 2>&1 && { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
            "$python" -m venv "$VENV"
        } || die "cannot create a virtualenv (install python3-venv)"
    fi
    stamp=$(sha256sum "$REQUIREMENTS" | cut -c1-16)
    if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$stamp" ]; then
        log "installing pinned test tools (${REQUIREMENTS#"$ROOT"/})"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -r "$REQUIREMENTS"
        echo "$stamp" > "$VENV/.requirements"
    fi
    export PATH=$VENV/bin:$PATH
    export VIRTUAL_ENV=$VENV
}

setup_collection() {
    # Ansible finds the collection through a link named ansible_collections/dbtools/galera.
    mkdir -p "$BUILD/collections/ansible_collections/dbtools"
    ln -sfn "$ROOT" "$BUILD/collections/ansible_collections/dbtools/galera"
    export ANSIBLE_COLLECTIONS_PATH=$BUILD/collections
    export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-1}
    # Molecule keeps its state under ~/.ansible/tmp keyed by the checkout's directory *name*, so
    # two checkouts called "main" would share it (and one would believe the other's cluster
    # exists). Keep it inside this checkout instead.
    export MOLECULE_EPHEMERAL_DIRECTORY=${MOLECULE_EPHEMERAL_DIRECTORY:-$BUILD/molecule}
}

setup_image() {
    local ref
    log "node image (Debian $GALERA_SUITE)"
    ref=$("$ROOT/images/node/build.sh" "$GALERA_SUITE" | tail -n 1) || die "building the node image failed"
    export GALERA_NODE_IMAGE=$ref
}

# The controller image of the newest ansible-core (images/controller/build.sh: Debian trixie,
# Python 3.13, tests/compat/newest-core.txt); images/controller/run runs commands in it.
setup_controller() {
    local ref
    log "controller image (Debian trixie, tests/compat/newest-core.txt)"
    ref=$("$ROOT/images/controller/build.sh" | tail -n 1) || die "building the controller image failed"
    export GALERA_CONTROLLER_IMAGE=$ref
}

# True when the three node containers of the local cluster exist.
cluster_exists() {
    local n
    for n in galera-node1 galera-node2 galera-node3; do
        docker inspect "$n" >/dev/null 2>&1 || return 1
    done
}

setup_all() {
    require_docker
    setup_venv
    setup_collection
    setup_image
}

# Debian packages the tests run for real: promtool/Prometheus and node_exporter (the metrics tests).
setup_test_packages() {
    local missing=()
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} (Debian packages) for the metrics tests"
    log "installing ${missing[*]} (Debian packages, for the metrics tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}
