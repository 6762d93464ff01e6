"""After the module tests: every node Synced, wsrep_desync OFF, no lease left behind;
and the lease itself holds under a true simultaneous acquire on two nodes."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from conftest import admin_connection, sql, status, variable

testinfra_hosts = ["galera"]
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.dbtools.galera.plugins.module_utils import _lease, _wsrep  # noqa: E402
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError  # noqa: E402


def test_node_left_synced_and_not_desynced(host):
    assert variable(host, "wsrep_desync") == "0"
    st = status(host, "wsrep_local_state_comment", "wsrep_desync_count")
    assert st == {"wsrep_local_state_comment": "Synced", "wsrep_desync_count": "0"}


def test_no_lease_left_behind(nodes):
    for node in nodes:
        assert sql(node, "SET SESSION wsrep_sync_wait = 1; SELECT COUNT(*) FROM dbtools_galera.desync_lease") == [["0"]]


class CommitBarrier:
    """A real PyMySQL connection whose commit() waits until both racers are about to commit,
    so the two lease transactions truly overlap and Galera certification must pick one."""

    def __init__(self, conn, barrier):
        self._conn = conn
        self._barrier = barrier

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def commit(self):
        self._barrier.wait(timeout=30)
        return self._conn.commit()


@pytest.fixture
def admin_connections(request):
    conns = {name: admin_connection(name) for name in ("galera-node1", "galera-node2")}
    yield conns
    for conn in conns.values():
        conn.close()


def test_simultaneous_acquires_on_two_nodes_let_exactly_one_win(admin_connections):
    barrier = threading.Barrier(2)
    outcome = {}

    def acquire(name):
        node = _wsrep.Node(CommitBarrier(admin_connections[name], barrier))
        lease = _lease.Lease(node, "dbtools_galera")
        try:
            outcome[name] = lease.acquire(f"t-cert-{name}", name, None, "dbtools", 60, 0)
        except GaleraError as exc:
            outcome[name] = exc

    lease0 = _lease.Lease(_wsrep.Node(admin_connections["galera-node1"]), "dbtools_galera")
    lease0.ensure()
    threads = [threading.Thread(target=acquire, args=(n,)) for n in admin_connections]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        winners = [n for n, r in outcome.items() if isinstance(r, dict)]
        losers = [n for n, r in outcome.items() if isinstance(r, GaleraError) and r.get("conflict")]
        assert len(winners) == 1 and len(losers) == 1, outcome
        loser = outcome[losers[0]]
        assert "at the same moment" in loser.msg
        assert loser.get("holder")["owner"] == f"t-cert-{winners[0]}"
    finally:
        for name in admin_connections:
            _lease.Lease(_wsrep.Node(admin_connections[name]), "dbtools_galera").release(f"t-cert-{name}", name)
