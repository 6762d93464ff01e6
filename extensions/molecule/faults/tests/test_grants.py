"""Least privilege (docs/grants.md): the documented account with one grant missing is refused with an
error that names the missing privilege, and nothing is left changed (no node desynced, no lease, no
backup). Every scenario logs in as the documented account itself (resources/prepare.yml), so the
same grants are proven sufficient there; these tests prove the grants are needed and the errors clear.

Each test creates its own account (``dbtools_grants_probe``, dropped afterwards) from the same
statements the documentation shows (tests/tools/grants.py ``account_sql``), at 'localhost' and at the
cluster network, then leaves out one privilege.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import admin_connection, playbook_env, run_playbook

testinfra_hosts = ["galera"]
NODES = ("galera-node1", "galera-node2", "galera-node3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tests", "tools"))

import grants  # noqa: E402
from local_cluster import NETWORK  # noqa: E402

PROBE = "dbtools_grants_probe"
LEASE = "dbtools_galera"
BACKUP_DIR = "/var/backups/galera-grants"


def one(conn, query, args=None):
    with conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchone()


def network() -> str:
    """The cluster network's subnet (the nodes' addresses), e.g. 172.27.0.0/16."""
    out = subprocess.run(["docker", "network", "inspect", NETWORK], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["IPAM"]["Config"][0]["Subnet"]


class Probe:
    """The documented account, minus one grant, and the nodes seen by the administrator."""

    def __init__(self, tmp_path):
        self.admin = {n: admin_connection(n) for n in NODES}
        self.password = "Probe-" + os.urandom(8).hex()
        self.version = grants.parse_version(one(self.admin["galera-node1"], "SELECT VERSION()")[0])
        self.vars = tmp_path / "probe.json"
        self.vars.write_text(json.dumps({"probe_password": self.password}))
        self.vars.chmod(0o600)

    def create(self, without=None, hosts=None) -> list:
        hosts = hosts or ("localhost", network())
        self.drop()
        statements = grants.account_sql(self.version, PROBE, hosts, self.password, without=without)
        with self.admin["galera-node1"].cursor() as cur:
            for statement in statements:
                cur.execute(statement.rstrip(";"))
        return statements

    def drop(self) -> None:
        with self.admin["galera-node1"].cursor() as cur:
            cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (PROBE,))
            for (host,) in cur.fetchall():
                cur.execute("DROP USER %s@%s", (PROBE, host))

    def grants_text(self) -> str:
        with self.admin["galera-node1"].cursor() as cur:
            cur.execute(f"SHOW GRANTS FOR '{PROBE}'@'localhost'")
            return " ".join(r[0] for r in cur.fetchall())

    def module(self, request, node: str, module: str, **args) -> dict:
        """One module run on ``node`` as the probe account; its result."""
        args.update(login_user=PROBE, login_password="{{ probe_password }}", config_file="/nonexistent.cnf")
        env = dict(playbook_env(), ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
        run = subprocess.run(["ansible", "-i", request.config.option.ansible_inventory, node, "-m", module,
                              "-a", json.dumps(args), "-e", f"@{self.vars}"],
                             capture_output=True, text=True, env=env, timeout=600, check=False)
        data = json.loads(run.stdout[run.stdout.index("{"):])
        return data["plays"][0]["tasks"][0]["hosts"][node]

    # -- the nodes' state ------------------------------------------------------------------
    def desynced(self) -> dict:
        return {n: int(one(c, "SELECT @@wsrep_desync")[0]) for n, c in self.admin.items()}

    def state(self, node: str) -> str:
        return one(self.admin[node], "SHOW STATUS LIKE 'wsrep_local_state_comment'")[1]

    def lease(self):
        return one(self.admin["galera-node1"], f"SELECT node, owner FROM {LEASE}.desync_lease")

    def watchdogs(self, node: str) -> str:
        return subprocess.run(["docker", "exec", node, "sh", "-c", "ls /run/dbtools-galera/watchdog-*.pid 2>/dev/null"],
                              capture_output=True, text=True, check=False).stdout.strip()

    def assert_unchanged(self, node: str = "galera-node3") -> None:
        assert self.desynced() == {n: 0 for n in NODES}, "a node was left desynced"
        assert self.state(node) == "Synced"
        assert self.lease() is None, f"a lease was left behind: {self.lease()}"
        # A watchdog armed before a refusal disarms at its next check; one of an earlier test's run may still be
        # seeing its desync end (a server restart in between makes that a few checks).
        deadline = time.monotonic() + 60
        while self.watchdogs(node) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = self.watchdogs(node)
        if left:
            why = subprocess.run(["docker", "exec", node, "sh", "-c", "for f in /run/dbtools-galera/watchdog-*.pid; do "
                                  "echo \"$f: $(cat $f)\"; done; ps -eo pid,etime,args | grep -v grep | grep python; "
                                  "tail -n 25 /var/log/dbtools-galera/watchdog.log"],
                                 capture_output=True, text=True, check=False).stdout
            raise AssertionError(f"a watchdog was left running on {node}:\n{why}")

    def ensure_lease_schema(self) -> None:
        """The lease tables as the collection creates them (an administrator may create them first)."""
        sys.path.insert(0, os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":")[0])
        from ansible_collections.dbtools.galera.plugins.module_utils import _lease  # pylint: disable=import-outside-toplevel
        with self.admin["galera-node1"].cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {LEASE}")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {LEASE}.{_lease.TABLE} ({_lease.LEASE_COLUMNS}) ENGINE=InnoDB")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {LEASE}.{_lease.EVENTS_TABLE} ({_lease.EVENTS_COLUMNS}) "
                        "ENGINE=InnoDB")

    def plant_expired_lease(self, node: str, address: str, port: int) -> None:
        """A lease of ``node`` that expired an hour ago, as a controller that died leaves it."""
        with self.admin["galera-node1"].cursor() as cur:
            cur.execute(f"INSERT INTO {LEASE}.desync_lease (lease_key, cluster_name, node, node_address, owner, "
                        "acquired_at, expires_at) VALUES ('desync', 'dbtools', %s, %s, 'grants-old-owner', "
                        "UTC_TIMESTAMP(6) - INTERVAL 2 HOUR, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)",
                        (node, f"{address}:{port}"))

    def close(self) -> None:
        self.drop()
        for conn in self.admin.values():
            conn.close()


@pytest.fixture
def probe(tmp_path):
    p = Probe(tmp_path)
    p.ensure_lease_schema()
    p.assert_unchanged()
    yield p
    p.close()


DESYNC = dict(state="desynced", owner="grants-test", poll_interval=0.2)


def test_the_documented_account_desyncs_and_resyncs(request, probe):
    """The control for the refusals below: with every documented grant the same calls work."""
    probe.create()
    result = probe.module(request, "galera-node3", "dbtools.galera.galera_desync", **DESYNC)
    assert result.get("changed") and result.get("desynced"), result.get("msg")
    assert probe.desynced()["galera-node3"] == 1
    result = probe.module(request, "galera-node3", "dbtools.galera.galera_desync", **dict(DESYNC, state="synced"))
    assert result.get("changed") and result.get("desynced") is False, result.get("msg")
    probe.assert_unchanged()


REFUSED_DESYNC = [
    # (grant left out, words the error must hold)
    (("SUPER", "*.*"), ["SUPER"]),
    (("INSERT", f"`{LEASE}`.*"), ["INSERT command denied", f"{LEASE}.desync_lease", f"ON `{LEASE}`.*"]),
    (("SELECT", f"`{LEASE}`.*"), None),  # covered by SELECT ON *.*: the account still works
]


@pytest.mark.parametrize("without, words", REFUSED_DESYNC, ids=[f"without {w[0]} ON {w[1]}" for w, _x in REFUSED_DESYNC])
def test_desync_without_a_grant_names_it_and_changes_nothing(request, probe, without, words):
    statements = probe.create(without=without)
    assert not any(without[0] in s and without[1] in s for s in statements if s.startswith("GRANT")), statements
    result = probe.module(request, "galera-node3", "dbtools.galera.galera_desync", **DESYNC)
    if words is None:
        # SELECT on the lease schema is also granted on *.*: leaving it out there must not matter.
        assert result.get("desynced"), result.get("msg")
        result = probe.module(request, "galera-node3", "dbtools.galera.galera_desync", **dict(DESYNC, state="synced"))
        assert result.get("desynced") is False, result.get("msg")
        probe.assert_unchanged()
        return
    print(f"\nwithout {without[0]} ON {without[1]}: {result.get('msg')}")
    assert result.get("failed"), f"galera_desync worked without {without}: the grant is not needed"
    for word in words:
        assert word in result["msg"], result["msg"]
    probe.assert_unchanged()


@pytest.mark.parametrize("privilege", ["RELOAD", "PROCESS"])
def test_mariabackup_without_a_grant_names_it_and_keeps_nothing(request, probe, nodes, privilege):
    probe.create(without=(privilege, "*.*"))
    node3 = next(n for n in nodes if n.backend.get_pytest_id().endswith("galera-node3"))
    node3.run(f"rm -rf {BACKUP_DIR}")
    run = run_playbook(request, "dbtools.galera.backup", "-e", f"@{probe.vars}",
                       "-e", f"galera_backup_login_user={PROBE}",
                       "-e", "galera_backup_login_password={{ probe_password }}",
                       "-e", "galera_backup_node=galera-node3", "-e", "galera_backup_sample_seconds=0.5",
                       "-e", f"galera_backup_dir={BACKUP_DIR}")
    try:
        print(f"\nmariabackup without {privilege}: rc {run.returncode}")
        assert run.returncode != 0, f"the backup worked without {privilege}: the grant is not needed"
        assert f"missing required privilege {privilege}" in run.output, run.output[-3000:]
        assert probe.password not in run.output
        listing = node3.run(f"ls -1A {BACKUP_DIR} 2>/dev/null").stdout.split()
        kept = [name for name in listing if not name.endswith(".failed.json") and not name.startswith(".")]
        assert kept == [], f"a failed backup left {kept}"
        probe.assert_unchanged()
    finally:
        node3.run(f"rm -rf {BACKUP_DIR}")


def test_takeover_needs_the_account_at_the_nodes_addresses(request, probe):
    """An expired lease of galera-node2 is taken over from galera-node3 over TCP: with the account only at
    'localhost' galera-node2 refuses the login from galera-node3's address; the old lease is put back and
    galera-node3 is not desynced."""
    probe.create(hosts=("localhost",))
    node2 = one(probe.admin["galera-node2"], "SELECT @@wsrep_node_name, @@wsrep_node_address, @@port")
    probe.plant_expired_lease(*node2)
    try:
        result = probe.module(request, "galera-node3", "dbtools.galera.galera_desync", **DESYNC)
        print(f"\ntakeover with the account only at localhost: {result.get('msg')}")
        assert result.get("failed"), "the takeover worked without the account at the nodes' addresses"
        # 1130 "Host ... is not allowed to connect" when the server has no account at all for that host; here,
        # as on most servers, other accounts match it ('dbtools'@network, 'dbtools_admin'@'%'): 1045 for this user.
        assert "is not allowed to connect" in result["msg"] or \
            f"(1045) Access denied for user '{PROBE}'@'galera-node3" in result["msg"], result["msg"]
        assert f"cannot connect to {PROBE}@" in result["msg"], result["msg"]
        assert "the lease was put back" in result["msg"] and "This node was not desynced" in result["msg"]
        assert probe.lease() == ("galera-node2", "grants-old-owner"), "the old lease was not put back"
        assert probe.desynced() == {n: 0 for n in NODES}
    finally:
        with probe.admin["galera-node1"].cursor() as cur:
            cur.execute(f"DELETE FROM {LEASE}.desync_lease WHERE owner = 'grants-old-owner'")
    probe.assert_unchanged()
    # The same takeover with the account at the cluster network goes through.
    probe.create()
    probe.plant_expired_lease(*node2)
    result = probe.module(request, "galera-node3", "dbtools.galera.galera_desync", **DESYNC)
    assert result.get("desynced"), result.get("msg")
    assert result.get("previous_owner") == "grants-old-owner"
    result = probe.module(request, "galera-node3", "dbtools.galera.galera_desync", **dict(DESYNC, state="synced"))
    assert result.get("desynced") is False, result.get("msg")
    probe.assert_unchanged()
