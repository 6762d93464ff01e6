# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Two real HAProxy 2.6 instances in front of the three Galera nodes, for the lb scenario.

    python extensions/molecule/lb/haproxy.py up      start them (idempotent) and print their addresses as JSON
    python extensions/molecule/lb/haproxy.py down    remove them and the health-check user

Both run from the node image (images/node/packages.txt lists Debian's haproxy), on the dbtools-galera
network, balancing TCP 3306 over galera-node1..3 (roundrobin) with a MySQL health check every second:

- galera-haproxy1: its runtime API on TCP port 9999 of its address (reached by the controller and the
  nodes, so the on-node watchdog can put a node back) and on a Unix socket;
- galera-haproxy2: its runtime API only on the Unix socket /run/haproxy/admin.sock inside its container
  (reached by delegating to that host: out of the watchdog's reach, the documented limitation).

The health check logs in as ``haproxy_check`` (no password, no privileges), created on the cluster here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests", "tools"))
from local_cluster import NETWORK, admin_connection, container_ip  # noqa: E402  pylint: disable=wrong-import-position

NODES = ("galera-node1", "galera-node2", "galera-node3")
NAMES = ("galera-haproxy1", "galera-haproxy2")
LABEL = "org.dbtools.galera.test=haproxy"
BACKEND = "galera"
API_PORT = 9999
SOCKET = "/run/haproxy/admin.sock"
CONFIG = "/etc/haproxy/dbtools-lb.cfg"
CHECK_USER = "haproxy_check"


def docker(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, input=input_text,
                          timeout=120)


def image() -> str:
    return os.environ.get("GALERA_NODE_IMAGE") or "dbtools-galera-node:bookworm"


def config(name: str, nodes: dict) -> str:
    """haproxy.cfg of one instance (docs/lb.md shows the same shape)."""
    api = f"    stats socket ipv4@0.0.0.0:{API_PORT} level admin\n" if name == NAMES[0] else ""
    servers = "".join(f"    server {n} {ip}:3306\n" for n, ip in nodes.items())
    return (
        "global\n"
        f"    stats socket {SOCKET} mode 600 level admin\n"
        f"{api}"
        "    stats timeout 30s\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 2s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
        "frontend mysql\n"
        "    bind :3306\n"
        f"    default_backend {BACKEND}\n"
        f"backend {BACKEND}\n"
        "    balance roundrobin\n"
        f"    option mysql-check user {CHECK_USER} post-41\n"
        "    default-server check inter 1s fall 2 rise 1\n"
        f"{servers}"
    )


def show_servers(name: str) -> dict:
    """{server: (operational state, admin state)} read through the instance's own Unix socket."""
    proc = docker("exec", name, "sh", "-c", f"echo 'show servers state {BACKEND}' | socat - UNIX-CONNECT:{SOCKET}",
                  check=False)
    servers = {}
    for line in proc.stdout.splitlines()[2:]:
        fields = line.split()
        if len(fields) > 6 and fields[1] == BACKEND:
            servers[fields[3]] = (int(fields[5]), int(fields[6]))
    return servers


def _running(name: str, text: str) -> bool:
    """The instance runs already with this configuration and every server in rotation (a converge started
    it; verify reuses it). One left with a drained server by an aborted test is replaced."""
    proc = docker("exec", name, "sh", "-c", f"pgrep -x haproxy >/dev/null && cat {CONFIG}", check=False)
    if proc.returncode != 0 or proc.stdout != text:
        return False
    servers = show_servers(name)
    return len(servers) == len(NODES) and all(admin == 0 for _op, admin in servers.values())


def _start(name: str, nodes: dict) -> None:
    if _running(name, config(name, nodes)):
        return
    info = docker("inspect", name, check=False)
    if info.returncode == 0:
        docker("rm", "-f", name)
    docker("run", "-d", "--name", name, "--hostname", name, "--network", NETWORK, "--label", LABEL, image())
    if docker("exec", name, "haproxy", "-v", check=False).returncode != 0:
        raise RuntimeError(f"the image {image()} has no haproxy: rebuild the node image (images/node/build.sh; "
                           "images/node/packages.txt lists haproxy) and set GALERA_NODE_IMAGE to it")
    docker("exec", "-i", name, "sh", "-c", f"cat > {CONFIG}", input_text=config(name, nodes))
    docker("exec", name, "mkdir", "-p", os.path.dirname(SOCKET))
    docker("exec", name, "haproxy", "-c", "-q", "-f", CONFIG)
    docker("exec", name, "haproxy", "-D", "-f", CONFIG, "-p", "/run/haproxy.pid")


def up(timeout: float = 90) -> dict:
    """Start both instances (replacing earlier ones of another configuration) and wait until each sees the
    three nodes UP and in rotation."""
    conn = admin_connection(NODES[0])
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER IF NOT EXISTS '{CHECK_USER}'@'%'")
    finally:
        conn.close()
    nodes = {n: container_ip(n) for n in NODES}
    for name in NAMES:
        _start(name, nodes)
    deadline = time.monotonic() + timeout
    for name in NAMES:
        while True:
            servers = show_servers(name)
            if len(servers) == 3 and all(op == 2 and admin == 0 for op, admin in servers.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} does not see the three nodes UP within {timeout}s: {servers}")
            time.sleep(0.5)
    first, second = (container_ip(n) for n in NAMES)
    return {
        "haproxy1": dict(container=NAMES[0], ip=first, api=f"{first}:{API_PORT}", frontend=f"{first}:3306"),
        "haproxy2": dict(container=NAMES[1], ip=second, socket=SOCKET),
        "backend": BACKEND,
    }


def down() -> None:
    for name in NAMES:
        docker("rm", "-f", name, check=False)
    try:
        conn = admin_connection(NODES[0])
    except Exception:  # pylint: disable=broad-except  # no cluster: nothing to drop
        return
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{CHECK_USER}'@'%'")
    finally:
        conn.close()


def main(argv: list) -> int:
    if argv[1:] == ["up"]:
        print(json.dumps(up(), indent=2))
        return 0
    if argv[1:] == ["down"]:
        down()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
