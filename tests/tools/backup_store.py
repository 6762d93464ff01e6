# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Off-host backup stores for tests: an SSH server in a container and a local S3 server (moto).

    python tests/tools/backup_store.py up   --network NET --name NAME --image REF --state-dir DIR
    python tests/tools/backup_store.py down --name NAME --state-dir DIR

``up`` starts (a) container NAME from the node image on Docker network NET, running a real sshd
(fresh host keys, root may log in with a key only) that trusts a fresh client key pair written to
DIR, and (b) moto's S3 server on this host, bound to the network's gateway address (where
containers reach the host) on a free port, with a bucket. It writes DIR/store.json (see ``up``)
and prints it. ``down`` stops that moto server (by its recorded pid) and removes the container.
Both are idempotent. From Python: ``state = backup_store.up(...)``, ``backup_store.down(...)``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

STATE_FILE = "store.json"
LABEL = "org.dbtools.galera.test=backup-store"
BUCKET = "dbtools-backups"
REGION = "us-east-1"
STORE_PATH = "/srv/backups"
KEY_NAME = "store_ed25519"


def docker(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, input=input_text)


def _inspect(kind: str, name: str) -> dict | None:
    proc = docker(kind, "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def gateway_ip(network: str) -> str:
    info = _inspect("network", network)
    if info is None:
        raise RuntimeError(f"Docker network {network} does not exist")
    for config in info.get("IPAM", {}).get("Config") or []:
        if config.get("Gateway") and ":" not in config["Gateway"]:
            return config["Gateway"]
    raise RuntimeError(f"Docker network {network} has no IPv4 gateway")


def container_ip(name: str, network: str) -> str:
    info = _inspect("container", name)
    if info is None:
        raise RuntimeError(f"container {name} does not exist")
    return info["NetworkSettings"]["Networks"][network]["IPAddress"]


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def read_state(state_dir: str) -> dict | None:
    try:
        with open(state_path(state_dir), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _pid_is_moto(pid) -> bool:
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as handle:
            return b"moto" in handle.read()
    except (OSError, ValueError, TypeError):
        return False


def _wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError as exc:
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"moto did not answer at {url} within {seconds}s: {last}")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_tcp(host: str, port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                if sock.recv(4).startswith(b"SSH"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not answer at {host}:{port} within {seconds}s")
        time.sleep(0.2)


def _start_ssh(network: str, name: str, image: str, state_dir: str) -> dict:
    info = _inspect("container", name)
    if info is not None and not (info["State"]["Running"] and network in info["NetworkSettings"]["Networks"]):
        docker("rm", "-f", name)
        info = None
    if info is None:
        script = ("ssh-keygen -A >/dev/null && mkdir -p /run/sshd /root/.ssh " + STORE_PATH + " && chmod 700 /root/.ssh"
                  " && printf 'PermitRootLogin prohibit-password\\nPasswordAuthentication no\\n"
                  "KbdInteractiveAuthentication no\\n' > /etc/ssh/sshd_config.d/dbtools-test.conf"
                  " && exec /usr/sbin/sshd -D -e")
        docker("run", "-d", "--name", name, "--hostname", name, "--network", network, "--label", LABEL,
               image, "sh", "-c", script)
    key = os.path.join(state_dir, KEY_NAME)
    if not (os.path.exists(key) and os.path.exists(key + ".pub")):
        for path in (key, key + ".pub"):
            if os.path.exists(path):
                os.unlink(path)
        docker("exec", name, "sh", "-c", "rm -f /tmp/client /tmp/client.pub && "
               "ssh-keygen -q -t ed25519 -N '' -C dbtools-backup-store-client -f /tmp/client")
        private = docker("exec", name, "cat", "/tmp/client").stdout
        public = docker("exec", name, "cat", "/tmp/client.pub").stdout
        docker("exec", name, "rm", "-f", "/tmp/client", "/tmp/client.pub")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(private)
        with open(key + ".pub", "w", encoding="utf-8") as handle:
            handle.write(public)
    with open(key + ".pub", encoding="utf-8") as handle:
        public = handle.read().strip()
    docker("exec", "-i", name, "sh", "-c", "cat > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys",
           input_text=public + "\n")
    ip = container_ip(name, network)
    deadline = time.monotonic() + 30
    while True:
        proc = docker("exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} has no SSH host key after 30s: {proc.stderr.strip()}")
        time.sleep(0.2)
    host_key = " ".join(proc.stdout.split()[:2])
    _wait_tcp(ip, 22)
    known_hosts_line = f"{ip} {host_key}"
    known_hosts = os.path.join(state_dir, "known_hosts")
    with open(known_hosts, "w", encoding="utf-8") as handle:
        handle.write(known_hosts_line + "\n")
    return dict(name=name, ip=ip, port=22, user="root", path=STORE_PATH, private_key=key,
                public_key=public, host_key=host_key, known_hosts_line=known_hosts_line,
                known_hosts_file=known_hosts)


def _start_moto(network: str, state_dir: str, previous: dict | None) -> dict:
    gateway = gateway_ip(network)
    old = (previous or {}).get("s3") or {}
    if old.get("host") == gateway and _pid_is_moto(old.get("pid")):
        try:
            _wait_http(old["endpoint_url"] + "/moto-api/", seconds=5)
            return old
        except RuntimeError:
            _stop_pid(old.get("pid"))
    port = _free_port(gateway)
    log = os.path.join(state_dir, "moto.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", gateway, "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    endpoint = f"http://{gateway}:{port}"
    s3 = dict(host=gateway, port=port, endpoint_url=endpoint, bucket=BUCKET, region=REGION,
              access_key="dbtools-test-" + secrets.token_hex(4), secret_key=secrets.token_urlsafe(24),
              pid=proc.pid, log=log)
    try:
        _wait_http(endpoint + "/moto-api/")
    except RuntimeError:
        _stop_pid(proc.pid)
        raise
    client(s3).create_bucket(Bucket=BUCKET)
    return s3


def client(s3: dict):
    """A boto3 S3 client for the moto server described by ``state["s3"]``."""
    import boto3  # pylint: disable=import-outside-toplevel
    from botocore.config import Config  # pylint: disable=import-outside-toplevel

    return boto3.client("s3", endpoint_url=s3["endpoint_url"], region_name=s3["region"],
                        aws_access_key_id=s3["access_key"], aws_secret_access_key=s3["secret_key"],
                        config=Config(s3={"addressing_style": "path"}))


def _stop_pid(pid) -> None:
    if not _pid_is_moto(pid):
        return
    try:
        os.kill(int(pid), signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pid_is_moto(pid):
        try:
            if os.waitpid(int(pid), os.WNOHANG)[0]:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if _pid_is_moto(pid):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def up(network: str, name: str, image: str, state_dir: str) -> dict:
    """Start (or reuse) the SSH store and the S3 server; write and return the state.

    The state: ``network``, ``ssh`` (``name``, ``ip``, ``port``, ``user``, ``path`` (a directory for
    backups), ``private_key`` (path), ``public_key``, ``host_key``, ``known_hosts_line``,
    ``known_hosts_file``) and ``s3`` (``endpoint_url``, ``host``, ``port``, ``bucket``, ``region``,
    ``access_key``, ``secret_key``, ``pid``, ``log``).
    """
    state_dir = os.path.abspath(state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    if _inspect("network", network) is None:
        raise RuntimeError(f"Docker network {network} does not exist: create it first (docker network create {network})")
    previous = read_state(state_dir)
    state = dict(network=network, image=image)
    state["ssh"] = _start_ssh(network, name, image, state_dir)
    state["s3"] = _start_moto(network, state_dir, previous)
    with open(state_path(state_dir), "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)
        handle.write("\n")
    os.chmod(state_path(state_dir), 0o600)
    return state


def down(name: str, state_dir: str) -> None:
    """Stop the S3 server recorded in the state and remove the store container (no error if gone)."""
    state = read_state(state_dir) or {}
    _stop_pid((state.get("s3") or {}).get("pid"))
    docker("rm", "-f", "-v", name, check=False)
    try:
        os.unlink(state_path(state_dir))
    except OSError:
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--network", help="Docker network of the store (up)")
    parser.add_argument("--name", required=True, help="name of the SSH store container")
    parser.add_argument("--image", help="the node image (up)")
    parser.add_argument("--state-dir", required=True, help="where keys and store.json are written")
    args = parser.parse_args(argv)
    if args.action == "up":
        if not args.network or not args.image:
            parser.error("up needs --network and --image")
        print(json.dumps(up(args.network, args.name, args.image, args.state_dir), indent=2))
    else:
        down(args.name, args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
