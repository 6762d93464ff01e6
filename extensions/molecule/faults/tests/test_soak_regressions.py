"""Regressions found by the chaos soak (docs/soak.md), each replayed as a focused, deterministic test.

Every test names the soak seed and cycle that found the bug; ``scripts/soak --seed S --only N`` replays the
cycle itself. They drive the dbtools.galera.backup playbook against the real cluster, like test_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from conftest import admin_connection, kill_controller, kill_tree, playbook_command, playbook_env

testinfra_hosts = ["galera"]
NODES = ("galera-node1", "galera-node2", "galera-node3")


def docker(node, *argv, check=True, input_text=None):
    return subprocess.run(["docker", "exec", "-i", node, *argv], capture_output=True, text=True, check=check,
                          input=input_text)


def desynced_and_lease():
    out = {}
    for node in NODES:
        conn = admin_connection(node)
        with conn.cursor() as cur:
            cur.execute("SELECT @@wsrep_desync")
            out[node] = cur.fetchone()[0]
            try:
                cur.execute("SELECT COUNT(*) FROM dbtools_galera.desync_lease WHERE expires_at > UTC_TIMESTAMP(6)")
                out["lease"] = cur.fetchone()[0]
            except Exception:  # no lease table yet
                out["lease"] = 0
        conn.close()
    return out


class Lines(threading.Thread):
    """A playbook's output, read as it comes, so a test can act when a task starts."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc = proc
        self.lines = []

    def run(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the playbook ended before {text!r}: {''.join(self.lines)[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s")


def test_a_controller_killed_mid_task_leaves_no_password_on_the_nodes(request, tmp_path):
    """Soak seed dev2, cycle 8 (controller killed before the desync, +7.68 s): the playbook was killed while
    galera_info ran on the nodes, and Ansible's temporary copy of the module, whose arguments hold the login
    password (module_defaults), stayed in /root/.ansible/tmp on two nodes. The role runs its modules
    pipelined (ansible_pipelining in its defaults): their arguments go through the connection's stdin, and
    no file with the password is ever written on a node."""
    secret = "Pw-soak-" + os.urandom(12).hex()
    admin = admin_connection("galera-node1")
    with admin.cursor() as cur:
        cur.execute("CREATE OR REPLACE USER 'dbtools_soakreg'@'%%' IDENTIFIED BY %s", (secret,))
        cur.execute("CREATE OR REPLACE USER 'dbtools_soakreg'@'localhost' IDENTIFIED BY %s", (secret,))
        cur.execute("GRANT ALL ON *.* TO 'dbtools_soakreg'@'%'")
        cur.execute("GRANT ALL ON *.* TO 'dbtools_soakreg'@'localhost'")
    extra = tmp_path / "login.json"
    extra.write_text(json.dumps({"galera_login_user": "dbtools_soakreg", "galera_login_password": secret}))
    extra.chmod(0o600)
    before = {n: docker(n, "sh", "-c", "ls -1 /root/.ansible/tmp 2>/dev/null", check=False).stdout.split()
              for n in NODES}
    # galera_info samples each node for 4 s: the kill lands while the module (and its arguments) is on every node.
    cmd = playbook_command(request, "dbtools.galera.backup", "-e", f"@{extra}", "-e", "galera_backup_node=galera-node3",
                           "-e", "galera_backup_sample_seconds=4", "-e", "galera_backup_dir=/var/backups/galera-soakreg")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=playbook_env(),
                            start_new_session=True)
    lines = Lines(proc)
    lines.start()
    try:
        lines.wait_for("Read every member's Galera facts", 180)
        time.sleep(2)
        kill_controller(proc)
        time.sleep(6)  # the modules end on the nodes (the sample) and nothing is left to remove them
        found = {n: docker(n, "sh", "-c", "grep -rlF -f - /root/.ansible /tmp 2>/dev/null", input_text=secret,
                           check=False).stdout.split() for n in NODES}
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        with admin.cursor() as cur:
            cur.execute("DROP USER IF EXISTS 'dbtools_soakreg'@'%'")
            cur.execute("DROP USER IF EXISTS 'dbtools_soakreg'@'localhost'")
        admin.close()
        for node in NODES:  # what the killed run left (the test cluster is searched by other tests)
            left = docker(node, "sh", "-c", "ls -1 /root/.ansible/tmp 2>/dev/null", check=False).stdout.split()
            for name in set(left) - set(before[node]):
                if name.startswith("ansible-tmp-"):
                    docker(node, "rm", "-rf", f"/root/.ansible/tmp/{name}", check=False)
            docker(node, "rm", "-rf", "/var/backups/galera-soakreg", check=False)
    print(f"\ncontroller killed while galera_info ran; files holding the password on the nodes: {found}")
    assert found == {n: [] for n in NODES}, f"the login password was left on the nodes: {found}"
    assert desynced_and_lease() == {"galera-node1": 0, "galera-node2": 0, "galera-node3": 0, "lease": 0}
