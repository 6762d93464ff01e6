# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small lab in Docker for the off-host copy tests, separate from the Molecule cluster.

Network ``dbtools-copytest`` with container ``dbtools-copytest-node`` (the node image, holding
real backup directories made by ``Lab.make_backup``) and the stores of
``tests/tools/backup_store.py`` (an sshd container and moto's S3 server on the host). The
module runs through ansible-playbook with the docker connection, on the node. Everything is
removed at the end of the session, also when tests fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))

import backup_store  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = os.path.join(ROOT, ".build", "collections")
NETWORK = "dbtools-copytest"
NODE = "dbtools-copytest-node"
STORE = "dbtools-copytest-store"
BACKUP_DIR = "/var/backups/galera"
CLUSTER = "copytest"
NODE_KEY = "/root/.ssh/store_ed25519"
NODE_KNOWN_HOSTS = "/root/.ssh/store_known_hosts"


def ansible_playbook(workdir: str, inventory: str, target: str, *extra: str, **env_extra: str) -> tuple:
    """ansible-playbook of ``target`` (a playbook name or file) with ``inventory``, run in ``workdir`` with the
    collection of this checkout and plain output (``env_extra`` adds to the environment): (argv, completed
    process)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1", ANSIBLE_HOST_KEY_CHECKING="0",
               ANSIBLE_LOCAL_TEMP=os.path.join(workdir, "tmp"), **env_extra)
    binary = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    if not os.path.exists(binary):
        binary = shutil.which("ansible-playbook")
    argv = [binary, "-i", inventory, target, *extra]
    return argv, subprocess.run(argv, capture_output=True, text=True, env=env, cwd=workdir, check=False,
                                timeout=1800)


def docker(*args, check=True, input_text=None):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, input=input_text, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def node_image() -> str:
    ref = os.environ.get("GALERA_NODE_IMAGE")
    if ref:
        return ref
    suite = os.environ.get("GALERA_SUITE", "bookworm")
    out = subprocess.run([os.path.join(ROOT, "images", "node", "build.sh"), suite], check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def remove_lab() -> None:
    docker("rm", "-f", "-v", NODE, STORE, check=False)
    docker("network", "rm", NETWORK, check=False)


class Lab:
    """Helpers over the lab: run commands, make backups, run the module."""

    def __init__(self, image: str, state: dict, workdir: str):
        self.image = image
        self.state = state
        self.ssh = state["ssh"]
        self.s3 = state["s3"]
        self.workdir = workdir
        self.runs = 0

    # -- commands
    def node(self, script: str, check=True, input_text=None) -> subprocess.CompletedProcess:
        return docker("exec", "-i", NODE, "sh", "-c", script, check=check, input_text=input_text)

    def store(self, script: str, check=True) -> subprocess.CompletedProcess:
        return docker("exec", STORE, "sh", "-c", script, check=check)

    def s3_client(self):
        return backup_store.client(self.s3)

    # -- backups on the node
    def make_backup(self, backup_id: str, finished_at: str, kind="full", parent=None, chain=None,
                    cluster=CLUSTER, size_kib=256, extra_file=False) -> dict:
        """A real backup directory on the node: random data compressed with zstd, a nested
        file, SHA256SUMS by sha256sum and a manifest of format 1. Returns the manifest."""
        directory = f"{BACKUP_DIR}/{backup_id}"
        out = self.node(f"""set -eu
rm -rf {directory}; mkdir -p {directory}/meta; cd {directory}
head -c {size_kib * 1024} /dev/urandom | zstd -q -1 -o backup.xbstream.zst
printf 'backup_type = {kind}\\nto_lsn = 4711\\n' > meta/xtrabackup_checkpoints
find . -type f ! -name SHA256SUMS ! -name manifest.json -print0 | sort -z | xargs -0 -r sha256sum > SHA256SUMS
{'echo stray > not-listed.log' if extra_file else ':'}
echo "$(sha256sum < SHA256SUMS | cut -c1-64) $(wc -l < SHA256SUMS) $(du -sb . | cut -f1)"
""").stdout.split()
        manifest = {
            "format": 1, "id": backup_id, "result": "ok", "type": kind, "parent": parent,
            "chain": chain or [backup_id], "method": "mariabackup", "compress": "zstd",
            "node": "copytest-node", "wsrep_node_name": "copytest-node",
            "cluster": {"name": cluster, "state_uuid": "0a9b96b8-e84e-11f1-8837-e61f78bb5eef", "size": 3},
            "server": {"flavor": "mariadb", "version": "10.11.14", "provider_version": "26.4.22"},
            "started_at": finished_at, "finished_at": finished_at, "duration_seconds": 1.0,
            "tool_seconds": 1.0, "bytes": int(out[2]), "files": int(out[1]), "sha256": out[0],
            "sha256_of": "SHA256SUMS",
            "position": {"galera": None, "cluster_uuid": "0a9b96b8-e84e-11f1-8837-e61f78bb5eef", "seqno": 10,
                         "source": "test", "from_lsn": None, "to_lsn": 4711},
            "tables": 3, "encryption": None, "desync": {}, "verify": {"level": "checksum", "result": "ok"},
        }
        self.node(f"cat > {directory}/manifest.json && chmod 600 {directory}/manifest.json",
                  input_text=json.dumps(manifest, indent=2) + "\n")
        return manifest

    def local_snapshot(self, backup_id: str) -> str:
        """Names, sizes, modes, times and hashes of every file of a backup on the node."""
        directory = f"{BACKUP_DIR}/{backup_id}"
        return self.node(f"cd {directory} && find . -printf '%p %s %m %T@\\n' | sort && "
                         "find . -type f -print0 | sort -z | xargs -0 sha256sum").stdout

    def local_sums(self, backup_id: str) -> dict:
        """{relative path: sha256} of every file of the backup on the node (SHA256SUMS and manifest too)."""
        out = self.node(f"cd {BACKUP_DIR}/{backup_id} && find . -type f -print0 | sort -z | xargs -0 sha256sum").stdout
        sums = {}
        for line in out.splitlines():
            digest, rel = line.split(None, 1)
            sums[rel[2:] if rel.startswith("./") else rel] = digest
        return sums

    # -- destinations
    def ssh_dest(self, **overrides) -> dict:
        dest = dict(type="ssh", host=self.ssh["ip"], port=self.ssh["port"], user=self.ssh["user"],
                    path=self.ssh["path"], identity_file=NODE_KEY, known_hosts_file=NODE_KNOWN_HOSTS)
        dest.update(overrides)
        return dest

    def s3_dest(self, **overrides) -> dict:
        dest = dict(type="s3", bucket=self.s3["bucket"], prefix="galera/", endpoint_url=self.s3["endpoint_url"],
                    region=self.s3["region"], access_key=self.s3["access_key"], secret_key=self.s3["secret_key"])
        dest.update(overrides)
        return dest

    def s3_objects(self, prefix: str) -> dict:
        """{key: sha256 of the object} under ``prefix``, read back from the test side."""
        client = self.s3_client()
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.s3["bucket"], Prefix=prefix):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=self.s3["bucket"], Key=item["Key"])["Body"].read()
                out[item["Key"]] = hashlib.sha256(body).hexdigest()
        return out

    # -- the module
    def copy(self, src_id: str, dest: dict, check_mode=False, **options):
        """Run galera_backup_copy through ansible-playbook on the node.

        Returns (module result, the playbook's whole stdout)."""
        self.runs += 1
        args = dict(src=f"{BACKUP_DIR}/{src_id}", dest=dest, **options)
        play = [{"name": "copy a backup", "hosts": "node", "gather_facts": False,
                 "tasks": [{"name": "galera_backup_copy", "dbtools.galera.galera_backup_copy": args,
                            "check_mode": check_mode}]}]
        playbook = os.path.join(self.workdir, f"play{self.runs}.yml")
        with open(playbook, "w", encoding="utf-8") as handle:
            json.dump(play, handle)
        _argv, proc = ansible_playbook(self.workdir, os.path.join(self.workdir, "inventory.ini"), playbook,
                                       ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
        try:
            report = json.loads(proc.stdout)
            result = report["plays"][0]["tasks"][0]["hosts"]["node"]
        except (ValueError, KeyError, IndexError) as exc:
            raise AssertionError(f"ansible-playbook gave no result ({exc}); rc={proc.returncode}\n"
                                 f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        failed = bool(result.get("failed"))
        if failed != (proc.returncode != 0):
            raise AssertionError(f"rc {proc.returncode} does not agree with the result: {result}")
        return result, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def controller():
    """A working Docker engine, and this checkout as the collection ansible-playbook finds (COLLECTIONS)."""
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True,
                                                        check=False).returncode != 0:
        pytest.fail("these tests need a working Docker engine")
    link = os.path.join(COLLECTIONS, "ansible_collections", "dbtools", "galera")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)


@pytest.fixture(scope="session")
def lab(controller):  # pylint: disable=unused-argument,redefined-outer-name
    image = node_image()
    # A fixed place (ignored by git): a session killed before its teardown is cleaned up by the next.
    workdir = os.path.join(ROOT, ".build", "copytest")
    state_dir = os.path.join(workdir, "store")
    backup_store.down(STORE, state_dir)
    remove_lab()
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    try:
        docker("network", "create", NETWORK)
        docker("run", "-d", "--name", NODE, "--hostname", NODE, "--network", NETWORK, image)
        state = backup_store.up(NETWORK, STORE, image, state_dir)
        # What an operator's node holds: the key the store trusts, and the store's host key.
        docker("exec", NODE, "sh", "-c", "mkdir -p -m 700 /root/.ssh")
        docker("cp", state["ssh"]["private_key"], f"{NODE}:{NODE_KEY}")
        with open(os.path.join(workdir, "known_hosts"), "w", encoding="utf-8") as handle:
            handle.write(state["ssh"]["known_hosts_line"] + "\n")
        docker("cp", os.path.join(workdir, "known_hosts"), f"{NODE}:{NODE_KNOWN_HOSTS}")
        docker("exec", NODE, "sh", "-c", f"chown root:root {NODE_KEY} {NODE_KNOWN_HOSTS} && chmod 600 {NODE_KEY}")
        with open(os.path.join(workdir, "inventory.ini"), "w", encoding="utf-8") as handle:
            handle.write(f"node ansible_connection=community.docker.docker ansible_host={NODE} "
                         "ansible_python_interpreter=/usr/bin/python3\n")
        os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
        yield Lab(image, state, workdir)
    finally:
        backup_store.down(STORE, state_dir)
        remove_lab()
        shutil.rmtree(workdir, ignore_errors=True)
