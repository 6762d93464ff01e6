"""TCP logins: the role's backup (converge), and status, desync and resync here, log in over TCP to each
node's own address as a user that exists only for the nodes' addresses, so no socket login can work
for it; a login host that leads to another node is refused before anything changes.

The per-host addresses come from an extra inventory file next to Molecule's (host variables, as an
operator writes them).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import admin_connection, node_of, run_playbook, sql, status
from local_cluster import container_ip

testinfra_hosts = ["galera"]
NODES = ("galera-node1", "galera-node2", "galera-node3")
PASSWORD = "tcp pw $(id) `id` #;"  # the converge's test password
BACKUP_DIR = "/var/backups/galera-tcp"
OWNER = "tcp-test"


def tcp_inventory(tmp_path, addresses: dict) -> str:
    """An inventory of host variables: each node's galera_login_host and port."""
    lines = ["[galera]"]
    lines += [f"{node} galera_login_host={addresses[node]} galera_login_port=3306" for node in NODES]
    path = tmp_path / "tcp.ini"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def run_tcp(request, tmp_path, playbook, addresses=None, *extra):
    addresses = addresses or {n: container_ip(n) for n in NODES}
    secrets = tmp_path / "login.json"
    # The login as extra variables: they beat the scenarios' group_vars login (config.yml), and an ini file
    # would read the password's '#' as a comment.
    secrets.write_text(json.dumps({"galera_login_user": "dbtools_tcp", "galera_login_password": PASSWORD}),
                       encoding="utf-8")
    return run_playbook(request, playbook, "-i", tcp_inventory(tmp_path, addresses), "-e", f"@{secrets}", *extra)


@pytest.fixture(scope="module", autouse=True)
def cleanup():
    """Drop the converge's users and backups when the scenario is done (other scenarios read the nodes)."""
    yield
    conn = admin_connection(NODES[0])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT Host FROM mysql.user WHERE User = 'dbtools_tcp'")
            for (host,) in cur.fetchall():
                cur.execute("DROP USER 'dbtools_tcp'@%s", (host,))
    finally:
        conn.close()
    subprocess.run(["docker", "exec", "galera-node3", "rm", "-rf", BACKUP_DIR], check=False, timeout=60)


def test_the_user_cannot_log_in_through_a_socket(nodes):
    hosts = sorted(row[0] for row in sql(nodes[0], "SELECT Host FROM mysql.user WHERE User = 'dbtools_tcp'"))
    assert hosts == sorted(container_ip(n) for n in NODES), "dbtools_tcp must exist for the nodes' addresses only"
    for node in nodes:
        login = node.run("mariadb --protocol=SOCKET -u dbtools_tcp -p'x' -e 'SELECT 1'")
        assert login.rc != 0


def test_the_converge_backed_up_galera_node3_over_tcp(nodes):
    node3 = node_of(nodes, "galera-node3")
    listing = node3.run(f"ls -1 {BACKUP_DIR}").stdout.split()
    manifests = [json.loads(node3.file(f"{BACKUP_DIR}/{name}/manifest.json").content_string)
                 for name in listing if node3.file(f"{BACKUP_DIR}/{name}/manifest.json").exists]
    assert len(manifests) == 1, listing
    manifest = manifests[0]
    assert manifest["result"] == "ok" and manifest["node"] == "galera-node3"
    assert manifest["wsrep_node_name"] == "galera-node3"
    assert manifest["desync"]["resynced"] is True and manifest["desync"]["flow_control_sent"] == 0


def test_status_over_tcp(request, tmp_path):
    run = run_tcp(request, tmp_path, "dbtools.galera.status")
    assert run.returncode == 0, run.output[-3000:]
    for node in NODES:
        assert f"{node} Synced" in run.output, run.output[-3000:]


def test_desync_and_resync_over_tcp(request, tmp_path, nodes):
    node2 = node_of(nodes, "galera-node2")
    owner = ["-e", "galera_node=galera-node2", "-e", f"galera_owner={OWNER}"]
    desync = run_tcp(request, tmp_path, "dbtools.galera.desync", None, *owner)
    try:
        assert desync.returncode == 0, desync.output[-3000:]
        assert sql(node2, "SELECT @@wsrep_desync")[0][0] == "1"
        lease = sql(node2, "SELECT node, owner FROM dbtools_galera.desync_lease")
        assert lease == [["galera-node2", OWNER]]
    finally:
        resync = run_tcp(request, tmp_path, "dbtools.galera.resync", None, *owner)
    assert resync.returncode == 0, resync.output[-3000:]
    assert sql(node2, "SELECT @@wsrep_desync")[0][0] == "0"
    assert status(node2, "wsrep_local_state_comment")["wsrep_local_state_comment"] == "Synced"
    assert sql(node2, "SELECT COUNT(*) FROM dbtools_galera.desync_lease") == [["0"]]


def test_a_login_host_of_another_node_is_refused(request, tmp_path, nodes):
    """A load balancer's (or a copy-paste) mistake: galera-node3's login host is galera-node2's address."""
    addresses = {n: container_ip(n) for n in NODES}
    addresses["galera-node3"] = addresses["galera-node2"]
    node3 = node_of(nodes, "galera-node3")
    before = node3.run(f"ls -1a {BACKUP_DIR}").stdout
    run = run_tcp(request, tmp_path, "dbtools.galera.backup", addresses, "-e", "galera_backup_node=galera-node3",
                  "-e", f"galera_backup_dir={BACKUP_DIR}")
    assert run.returncode != 0, "a backup whose login reaches galera-node2 copied galera-node3's files"
    # galera_info and the tools would both reach galera-node2, consistent with each other: the plan sees two
    # hosts answering as one server (and the pre-flight would see another node's Galera uuid).
    assert "galera-node2 and galera-node3 reach the same server (galera-node2)" in run.output, run.output[-3000:]
    assert "nothing was changed" in run.output.lower()
    # Nothing was changed: no node desynced, no lease, no new file.
    for node in nodes:
        assert sql(node, "SELECT @@wsrep_desync")[0][0] == "0"
    assert sql(node3, "SELECT COUNT(*) FROM dbtools_galera.desync_lease") == [["0"]]
    assert node3.run(f"ls -1a {BACKUP_DIR}").stdout == before


def test_a_lone_host_whose_login_reaches_another_node_is_refused_by_the_preflight(request, tmp_path, nodes):
    """The same mistake with only galera-node3 in the play: no second host answers as galera-node2, so the
    plan cannot see it; the pre-flight does, from the Galera uuid in galera-node3's own gvwstate.dat."""
    addresses = {n: container_ip(n) for n in NODES}
    addresses["galera-node3"] = addresses["galera-node2"]
    node3 = node_of(nodes, "galera-node3")
    before = node3.run(f"ls -1a {BACKUP_DIR}").stdout
    run = run_tcp(request, tmp_path, "dbtools.galera.backup", addresses, "--limit", "galera-node3",
                  "-e", "galera_backup_cluster_size=3", "-e", f"galera_backup_dir={BACKUP_DIR}")
    assert run.returncode != 0, "a backup whose login reaches galera-node2 copied galera-node3's files"
    assert "the login settings of this host reach node 'galera-node2'" in run.output, run.output[-3000:]
    assert "Nothing was changed" in run.output
    for node in nodes:
        assert sql(node, "SELECT @@wsrep_desync")[0][0] == "0"
    assert sql(node3, "SELECT COUNT(*) FROM dbtools_galera.desync_lease") == [["0"]]
    assert node3.run(f"ls -1a {BACKUP_DIR}").stdout == before
