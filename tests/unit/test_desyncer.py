# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Desyncer against a fake three-node cluster (tests/unit/fake_galera.py): every branch of
state=desynced and state=synced, the expired-lease takeover, check mode against the real run, and
the failures at each step, in fake time."""

from __future__ import annotations

import pytest
from fake_galera import install, lost, mysql_error, once  # pylint: disable=import-error

from ansible_collections.dbtools.galera.plugins.module_utils import _resync, _desync, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

OWNER = "t-owner"
SOCKET = "/run/mysqld/mysqld.sock"
LEASE_DELETE = "DELETE FROM `dbtools_galera`.`desync_lease`"
MARK = "SET flow_control_sent_at_desync"


def params(**kw) -> dict:
    base = dict(login_user=None, login_password=None, login_host="localhost", login_port=3306,
                login_unix_socket=SOCKET, config_file=None, ca_cert=None, client_cert=None, client_key=None,
                check_hostname=None, connect_timeout=5,
                owner=OWNER, force=False, lease=True, lease_database="dbtools_galera", lease_ttl=300,
                min_cluster_size=2, max_recv_queue=None, drain_timeout=60, timeout=30, poll_interval=0.5,
                watchdog=True, watchdog_hold_pid_file=None, watchdog_max_hold=21600, watchdog_max_recv_queue=0,
                watchdog_hard_limit_fraction=0.5, watchdog_min_free_bytes=1 << 30, watchdog_min_free_fraction=0.05)
    base.update(kw)
    return base


class FakeWatchdog:
    """Stands for _watchdog: records what the node and the lease looked like when it was armed."""

    def __init__(self, cluster, fail_prepare: bool = False, fail_arm: bool = False):
        self.cluster = cluster
        self.fail_prepare = fail_prepare
        self.fail_arm = fail_arm
        self.prepared = []
        self.armed = []

    def prepare(self, owner, node):
        if self.fail_prepare:
            raise GaleraError("cannot prepare the desync watchdog: [Errno 30] Read-only file system: "
                              "'/run/dbtools-galera'. Nothing was changed.")
        self.prepared.append((owner, node))

    def arm(self, params_, owner, node):
        self.prepare(owner, node)
        if self.fail_arm:
            raise GaleraError("cannot start the desync watchdog: [Errno 11] Resource temporarily unavailable")
        self.armed.append(dict(owner=owner, node=node, desync=self.cluster.node(node).desync,
                               lease=self.cluster.lease_row(), local=params_.get("_gcache_local")))
        return dict(pid=4242, state_file="/run/dbtools-galera/watchdog-x.json",
                    log_file="/var/log/dbtools-galera/watchdog.log", started=True)


class Harness:
    """A Desyncer on node3 (through the socket) of a fake cluster, with its warnings."""

    def __init__(self, cluster, check_mode=False, watchdog=None, **kw):
        self.cluster = cluster
        self.conn = cluster.connect(unix_socket=SOCKET)
        self.warnings = []
        self.watchdog = watchdog or FakeWatchdog(cluster)
        self.node = _wsrep.Node(self.conn)
        self.desyncer = _desync.Desyncer(params(**kw), self.node, check_mode, self.warnings.append,
                                         watchdog=self.watchdog, clock=cluster.clock, sleep=cluster.clock.sleep)

    def desynced(self):
        return self.desyncer.desynced()

    def synced(self):
        return self.desyncer.synced()

    def count(self, prefix):
        return sum(1 for s in self.conn.statements if s.startswith(prefix))


@pytest.fixture
def cluster(monkeypatch):
    return install(monkeypatch)


def n3(cluster):
    return cluster.node("galera-node3")


def lease_of(cluster):
    row = cluster.lease_row()
    return (row["owner"], row["node"]) if row else None


def expire_old_lease_on_node2(cluster, address=None):
    """Owner 'old' desynced node2 long ago; its lease expired and nothing resynced it."""
    node2 = cluster.node("galera-node2")
    node2.desync = True
    cluster.put_lease("old", "galera-node2", acquired=-600, expires=-300, node_address=address)
    return node2


# -- state=desynced ------------------------------------------------------------------------------

def test_desync_from_synced_arms_the_watchdog_before_wsrep_desync_on(cluster):
    h = Harness(cluster)
    r = h.desynced()
    assert r["changed"] and r["desynced"]
    assert n3(cluster).desync and r["after"]["local_state_comment"] == "Donor/Desynced"
    assert r["local_state_comment"] == dict(before="Synced", after="Donor/Desynced")
    assert lease_of(cluster) == (OWNER, "galera-node3") and r["lease"]["owner"] == OWNER
    assert cluster.lease["fc"] == n3(cluster).fc_sent  # the counter at the moment of the desync
    # Armed once, on our lease, while the node was not desynced yet; told its disk is local.
    assert len(h.watchdog.armed) == 1
    armed = h.watchdog.armed[0]
    assert (armed["owner"], armed["node"], armed["desync"], armed["local"]) == (OWNER, "galera-node3", False, True)
    assert (armed["lease"]["owner"], armed["lease"]["node"]) == (OWNER, "galera-node3")
    assert r["watchdog"]["pid"] == 4242
    assert "SET GLOBAL wsrep_desync = ON" in h.node.queries


def test_desync_sends_no_ddl_and_no_duplicate_reads_when_the_schema_exists(cluster):
    h = Harness(cluster)
    h.desynced()
    assert cluster.ddl == []
    assert not any(s.startswith("CREATE") or "information_schema" in s for s in h.conn.statements)
    # before and after: one status and one variables read each, nothing more
    assert h.count("SHOW GLOBAL STATUS") == 2 and h.count("SHOW GLOBAL VARIABLES") == 2
    assert h.count("SELECT lease_key") == 3  # the judgement, FOR UPDATE in the acquire, the result


@pytest.mark.parametrize("present, created", [
    (set(), ["CREATE DATABASE", "desync_lease", "desync_events"]),
    ({"database"}, ["desync_lease", "desync_events"]),
    ({"database", "desync_events"}, ["desync_lease"]),
])
def test_desync_creates_only_the_missing_schema(cluster, present, created):
    cluster.schema = set(present)
    h = Harness(cluster)
    r = h.desynced()
    assert r["changed"] and lease_of(cluster) == (OWNER, "galera-node3")
    assert len(cluster.ddl) == len(created)
    for ddl, what in zip(cluster.ddl, created):
        assert what in ddl


def test_same_owner_again_changes_nothing_and_rearms(cluster):
    Harness(cluster).desynced()
    h = Harness(cluster)
    r = h.desynced()
    assert not r["changed"] and r["desynced"]
    assert not any(s.startswith("SET GLOBAL") or s.startswith("INSERT") for s in h.conn.statements)
    assert len(h.watchdog.armed) == 1 and h.watchdog.armed[0]["desync"] is True


@pytest.mark.parametrize("holder", [None, "someone-else"])
def test_already_desynced_not_by_us_is_refused(cluster, holder):
    n3(cluster).desync = True
    if holder:
        cluster.put_lease(holder, "galera-node3", acquired=0, expires=300)
    before = cluster.lease_row()
    h = Harness(cluster)
    with pytest.raises(GaleraError, match="already desynced") as info:
        h.desynced()
    text = info.value.msg
    assert ("owner 'someone-else'" in text) if holder else ("set outside dbtools.galera" in text)
    assert "Nothing was changed" in text
    assert cluster.lease_row() == before and n3(cluster).desync
    assert h.watchdog.armed == [] and h.watchdog.prepared == []


def test_desync_of_a_node_desynced_by_the_server_for_a_backup_stage_is_refused(cluster):
    n3(cluster).other_desyncs = 1  # BACKUP STAGE BLOCK_COMMIT: desync_count 1, wsrep_desync OFF
    h = Harness(cluster)
    with pytest.raises(GaleraError, match=r"not Synced \(wsrep_local_state_comment=Donor/Desynced\)"):
        h.desynced()
    assert cluster.lease is None and not n3(cluster).desync and n3(cluster).other_desyncs == 1


def test_resync_leaves_a_backup_stage_desync_alone(cluster):
    n3(cluster).other_desyncs = 1
    h = Harness(cluster)
    r = h.synced()
    assert not r["changed"] and not r["desynced"]
    assert any("for another reason" in w and "wsrep_desync_count=1" in w for w in h.warnings)
    assert n3(cluster).other_desyncs == 1 and not n3(cluster).desync
    assert not any(s.startswith("SET GLOBAL") for s in h.conn.statements)


def test_lease_held_for_another_node_is_refused(cluster):
    cluster.node("galera-node1").desync = True
    cluster.put_lease("other", "galera-node1", acquired=0, expires=300)
    h = Harness(cluster)
    with pytest.raises(GaleraError, match="another desync holds the cluster-wide lease: node galera-node1") as info:
        h.desynced()
    assert info.value.get("holder")["owner"] == "other"
    assert not n3(cluster).desync and lease_of(cluster) == ("other", "galera-node1")


@pytest.mark.parametrize("change, fragment", [
    (lambda c: setattr(c.node("galera-node3"), "cluster_status", "non-Primary"), "not in a Primary component"),
    (lambda c: setattr(c.node("galera-node3"), "ready", False), "not ready (wsrep_ready=OFF)"),
    (lambda c: setattr(c.node("galera-node1"), "cluster_status", "gone"), "leave 1 synced member(s) of 2"),
])
def test_unsafe_nodes_are_refused(cluster, change, fragment):
    change(cluster)
    with pytest.raises(GaleraError, match="refusing to desync") as info:
        Harness(cluster).desynced()
    assert fragment in info.value.msg and "Nothing was changed" in info.value.msg
    assert cluster.lease is None and not n3(cluster).desync


def test_certification_conflict_names_the_winner_and_changes_nothing(cluster):
    cluster.before_commit.append(lambda: cluster.put_lease("racer", "galera-node1", acquired=0, expires=300))
    h = Harness(cluster)
    with pytest.raises(GaleraError, match="at the same moment: node galera-node1 desynced by owner 'racer'") as info:
        h.desynced()
    assert info.value.get("conflict") and info.value.get("holder")["owner"] == "racer"
    assert "Only one node of a cluster may be desynced at a time" in info.value.msg
    assert not n3(cluster).desync and lease_of(cluster) == ("racer", "galera-node1")
    assert h.watchdog.armed == []
    assert h.conn.sync_wait == 0  # the causal read is switched off again


def test_free_space_under_the_guard_is_refused_before_anything(cluster, monkeypatch):
    monkeypatch.setattr(_wsrep, "filesystem_space", lambda path: dict(free_bytes=900 << 20, total_bytes=10 << 30))
    h = Harness(cluster)
    with pytest.raises(GaleraError, match="gcache.dir /nonexistent/fake-datadir/ has 943718400 bytes free") as info:
        h.desynced()
    assert "Nothing was changed" in info.value.msg
    assert cluster.lease is None and not n3(cluster).desync
    r = Harness(cluster, watchdog_min_free_bytes=0, watchdog_min_free_fraction=0).desynced()
    assert r["changed"]


def test_free_space_is_not_judged_for_a_remote_server(cluster, monkeypatch):
    monkeypatch.setattr(_wsrep, "filesystem_space", lambda path: dict(free_bytes=1, total_bytes=10 << 30))
    cluster.local = None
    h = Harness.__new__(Harness)
    h.cluster = cluster
    h.conn = cluster.connect(host="galera-node3", port=3306)
    h.warnings, h.watchdog, h.node = [], FakeWatchdog(cluster), None
    h.node = _wsrep.Node(h.conn)
    n3(cluster).hostname = "a-machine-that-is-not-this-one"
    h.desyncer = _desync.Desyncer(params(login_unix_socket=None, login_host="galera-node3"), h.node, False,
                                  h.warnings.append, watchdog=h.watchdog, clock=cluster.clock, sleep=cluster.clock.sleep)
    assert h.desynced()["changed"]
    assert h.watchdog.armed[0]["local"] is False


# -- the watchdog's failures and the rollback ------------------------------------------------------

def test_watchdog_that_cannot_be_prepared_changes_nothing(cluster):
    h = Harness(cluster, watchdog=FakeWatchdog(cluster, fail_prepare=True))
    with pytest.raises(GaleraError, match="Read-only file system.*Nothing was changed"):
        h.desynced()
    assert cluster.lease is None and not n3(cluster).desync
    assert not any(s.startswith(("INSERT", "SET GLOBAL", "CREATE")) for s in h.conn.statements)


def test_watchdog_that_cannot_fork_releases_the_lease_before_any_desync(cluster):
    h = Harness(cluster, watchdog=FakeWatchdog(cluster, fail_arm=True))
    with pytest.raises(GaleraError, match="cannot start the desync watchdog"):
        h.desynced()
    assert cluster.lease is None and not n3(cluster).desync
    assert "SET GLOBAL wsrep_desync = ON" not in h.conn.statements


def test_failure_of_the_desync_itself_releases_the_lease(cluster):
    n3(cluster).fail["SET GLOBAL wsrep_desync = ON"] = mysql_error(1227, "Access denied; you need the SUPER privilege")
    h = Harness(cluster)
    with pytest.raises(Exception, match="SUPER"):
        h.desynced()
    assert cluster.lease is None and not n3(cluster).desync


@pytest.mark.parametrize("fail", [
    {"SHOW GLOBAL STATUS": once(lost(), skip=1)},            # the read after the desync
    {MARK: once(mysql_error(1205, "Lock wait timeout exceeded"))},  # recording the desync in the lease
])
def test_failure_after_the_desync_is_rolled_back(cluster, fail):
    n3(cluster).fail.update(fail)
    h = Harness(cluster)
    with pytest.raises(GaleraError, match="was desynced but then .*it was rolled back .*Nothing was changed") as info:
        h.desynced()
    assert not info.value.get("changed")
    assert not n3(cluster).desync and n3(cluster).local_state == _wsrep.SYNCED
    assert cluster.lease is None
    assert h.watchdog.armed and h.watchdog.armed[0]["desync"] is False


def test_lease_lost_between_acquire_and_mark_is_rolled_back(cluster):
    node = n3(cluster)
    real = node.set_desync

    def desync_and_lose_the_lease(on):
        real(on)
        if on:  # the lease expired and another owner replaced it at this very moment
            cluster.put_lease("thief", "galera-node1", acquired=0, expires=300)

    node.set_desync = desync_and_lose_the_lease
    with pytest.raises(GaleraError, match="no longer owner 't-owner''s .*rolled back"):
        Harness(cluster).desynced()
    assert not node.desync and lease_of(cluster) == ("thief", "galera-node1")


def test_a_failed_rollback_keeps_the_lease_for_the_watchdog(cluster):
    node = n3(cluster)
    real = node.set_desync

    def desync_then_connection_dies(on):
        real(on)
        node.fail[""] = lost()  # every later statement

    node.set_desync = desync_then_connection_dies
    with pytest.raises(GaleraError, match="the rollback failed too") as info:
        Harness(cluster).desynced()
    assert "the watchdog (pid 4242) resyncs it when the lease expires" in info.value.msg
    assert info.value.get("changed") is True
    assert node.desync and lease_of(cluster) == (OWNER, "galera-node3")


# -- the expired lease takeover ----------------------------------------------------------------

def test_takeover_resyncs_the_recorded_node_over_tcp_despite_a_socket_in_my_cnf(cluster, tmp_path):
    """The review's case: ~/.my.cnf names the local socket; the old code talked to node3 there,
    saw wsrep_desync OFF, took the lease and left node2 desynced."""
    cnf = tmp_path / "my.cnf"
    cnf.write_text(f"[client]\nsocket = {SOCKET}\nport = 3307\n")
    node2 = expire_old_lease_on_node2(cluster)
    lease_at_remote_resync = []
    real = node2.set_desync
    node2.set_desync = lambda on: (lease_at_remote_resync.append(lease_of(cluster)), real(on))

    h = Harness(cluster, login_unix_socket=None, config_file=str(cnf))
    r = h.desynced()
    assert r["changed"] and r["previous_owner"] == "old"
    assert not node2.desync and node2.local_state == _wsrep.SYNCED
    assert n3(cluster).desync and lease_of(cluster) == (OWNER, "galera-node3")
    assert lease_at_remote_resync == [(OWNER, "galera-node3")]  # the lease was ours before node2 was touched
    remote = [c for c in cluster.connections if c.server is node2]
    assert remote and all(c.unix_socket is None and (c.host, c.kwargs["port"]) == ("galera-node2", 3306)
                          for c in remote)
    assert any("resynced node galera-node2 first" in w for w in h.warnings)
    assert "SET GLOBAL wsrep_desync = OFF" in h.node.queries


def test_takeover_refuses_when_the_address_answers_as_another_node(cluster):
    node2 = expire_old_lease_on_node2(cluster, address="galera-node1:3306")
    old = cluster.lease_row()
    h = Harness(cluster)
    with pytest.raises(GaleraError, match="answers as node 'galera-node1', not 'galera-node2'") as info:
        h.desynced()
    assert "the lease was put back, still naming it" in info.value.msg
    assert "This node was not desynced" in info.value.msg
    assert cluster.lease_row() == old and node2.desync
    assert not n3(cluster).desync and not cluster.node("galera-node1").desync
    assert h.watchdog.armed == []


@pytest.mark.parametrize("breakage, fragment", [
    (lambda c: c.node("galera-node2").fail.update({"SET GLOBAL wsrep_desync = OFF": lost()}), "Lost connection"),
    (lambda c: setattr(c.node("galera-node2"), "stuck", True), "not Synced yet (Joined)"),
    (lambda c: setattr(c, "tcp_password", "secret"), "Access denied"),
    (lambda c: setattr(c.node("galera-node2"), "host", "moved-away"), "cannot connect to"),
])
def test_takeover_that_cannot_resync_the_old_node_puts_its_row_back(cluster, breakage, fragment):
    expire_old_lease_on_node2(cluster, address="galera-node2:3306")
    old = cluster.lease_row()
    breakage(cluster)
    h = Harness(cluster, timeout=5)
    with pytest.raises(GaleraError, match="must be resynced before another node is desynced") as info:
        h.desynced()
    assert fragment in info.value.msg
    assert "force=true on galera-node2" in info.value.msg
    assert cluster.lease_row() == old
    assert not n3(cluster).desync and h.watchdog.armed == []


def test_takeover_of_an_old_node_no_longer_desynced(cluster):
    node2 = expire_old_lease_on_node2(cluster)
    node2.desync = False
    h = Harness(cluster)
    r = h.desynced()
    assert r["changed"] and r["previous_owner"] == "old"
    assert lease_of(cluster) == (OWNER, "galera-node3") and n3(cluster).desync
    assert not any("first" in w for w in h.warnings)


def test_takeover_lost_to_a_faster_owner(cluster):
    expire_old_lease_on_node2(cluster)
    cluster.before_commit.append(lambda: cluster.put_lease("faster", "galera-node1", acquired=0, expires=300))
    with pytest.raises(GaleraError, match="owner 'faster'"):
        Harness(cluster).desynced()
    assert cluster.node("galera-node2").desync  # not ours to resync any more
    assert not n3(cluster).desync and lease_of(cluster) == ("faster", "galera-node1")


def test_expired_lease_of_this_node_by_another_owner_is_not_cleared(cluster):
    n3(cluster).desync = True
    cluster.put_lease("old", "galera-node3", acquired=-600, expires=-1)
    with pytest.raises(GaleraError, match="its lease expired .* its watchdog resyncs it"):
        Harness(cluster).desynced()
    assert n3(cluster).desync and lease_of(cluster) == ("old", "galera-node3")


# -- state=synced ----------------------------------------------------------------------------

def test_resync_drains_resyncs_waits_and_releases(cluster):
    Harness(cluster).desynced()
    n3(cluster).queue = 500
    n3(cluster).drain_per_second = 200
    h = Harness(cluster)
    r = h.synced()
    assert r["changed"] and not r["desynced"] and r["drained"]
    assert r["max_recv_queue_seen"] == 500 and r["drain_seconds"] >= 2
    assert r["flow_control_sent"] == 0 and r["sync_seconds"] is not None
    assert r["lease"] is None and cluster.lease is None
    assert not n3(cluster).desync and n3(cluster).local_state == _wsrep.SYNCED
    assert r["after"]["local_state_comment"] == "Synced"


def test_resync_reuses_the_first_status_read(cluster):
    Harness(cluster).desynced()
    h = Harness(cluster)
    h.synced()
    # one read to judge (reused as the drain's first), two more drain reads (the queue must stay drained
    # for SETTLE_READS reads), three polls to Synced (Donor/Desynced, Joined, Synced), one read for the result
    assert h.count("SHOW GLOBAL STATUS") == 4 + _resync.SETTLE_READS
    assert h.count("SELECT lease_key") == 1


def test_drain_timeout_resyncs_anyway_and_reports_the_flow_control(cluster):
    Harness(cluster).desynced()
    n3(cluster).queue = 500
    n3(cluster).drain_per_second = 0
    h = Harness(cluster, drain_timeout=10)
    r = h.synced()
    assert r["changed"] and not r["drained"] and r["drain_seconds"] >= 10
    assert any("did not drain to 8 within drain_timeout=10s (last 500)" in w for w in h.warnings)
    assert not n3(cluster).desync and cluster.lease is None
    assert r["flow_control_sent"] > 0


def test_resync_not_synced_in_time_keeps_the_lease(cluster):
    Harness(cluster).desynced()
    n3(cluster).stuck = True
    with pytest.raises(GaleraError, match="did not reach Synced within timeout=5s .*the lease is kept") as info:
        Harness(cluster, timeout=5).synced()
    assert info.value.get("changed") is True
    assert lease_of(cluster) == (OWNER, "galera-node3") and not n3(cluster).desync
    n3(cluster).stuck = False
    r = Harness(cluster).synced()  # the rerun finishes the job
    assert r["changed"] and cluster.lease is None


def test_release_failure_after_a_successful_resync(cluster):
    Harness(cluster).desynced()
    n3(cluster).fail[LEASE_DELETE] = once(mysql_error(1205, "Lock wait timeout exceeded"))
    with pytest.raises(GaleraError, match="was resynced and is Synced, but its desync lease could not be released") \
            as info:
        Harness(cluster).synced()
    assert info.value.get("changed") is True and info.value.get("desynced") is False
    assert "rerun galera_desync state=synced" in info.value.msg
    assert not n3(cluster).desync and lease_of(cluster) == (OWNER, "galera-node3")
    r = Harness(cluster).synced()
    assert r["changed"] and cluster.lease is None


@pytest.mark.parametrize("holder", [None, "someone-else"])
def test_resync_of_a_desync_not_ours_needs_force(cluster, holder):
    n3(cluster).desync = True
    if holder:
        cluster.put_lease(holder, "galera-node3", acquired=0, expires=300)
    with pytest.raises(GaleraError, match="use force: true") as info:
        Harness(cluster).synced()
    assert "Nothing was changed" in info.value.msg and n3(cluster).desync
    h = Harness(cluster, force=True)
    r = h.synced()
    assert r["changed"] and r["previous_owner"] == (holder or "unknown")
    assert not n3(cluster).desync and cluster.lease is None
    assert any("force: clearing" in w for w in h.warnings)


def test_forced_resync_leaves_another_nodes_lease_alone(cluster):
    n3(cluster).desync = True
    cluster.put_lease("other", "galera-node1", acquired=0, expires=300)
    r = Harness(cluster, force=True).synced()
    assert r["changed"] and r["previous_owner"] == "unknown"
    assert lease_of(cluster) == ("other", "galera-node1") and r["lease"]["owner"] == "other"


def test_without_lease_a_resync_needs_force(cluster):
    h = Harness(cluster, lease=False)
    r = h.desynced()
    assert r["changed"] and cluster.lease is None and r["lease"] is None
    assert any("needs the lease" in w for w in h.warnings) and h.watchdog.armed == []
    with pytest.raises(GaleraError, match="lease: false"):
        Harness(cluster, lease=False).synced()
    assert Harness(cluster, lease=False, force=True).synced()["changed"]
    assert not n3(cluster).desync


# -- check mode predicts the real run ------------------------------------------------------------

def _fresh(monkeypatch, setup):
    cluster = install(monkeypatch)
    setup(cluster)
    return cluster


def _ours(cluster):
    n3(cluster).desync = True
    cluster.put_lease(OWNER, "galera-node3", acquired=0, expires=300)


def _ours_off_catching_up(cluster):
    cluster.put_lease(OWNER, "galera-node3", acquired=0, expires=300)
    n3(cluster).catching_up = [3]


def _dba(cluster):
    n3(cluster).desync = True


SCENARIOS = [
    ("desynced", {}, lambda c: None),
    ("desynced", {}, _ours),
    ("desynced", {}, expire_old_lease_on_node2),
    ("desynced", {"lease": False}, lambda c: None),
    ("synced", {}, _ours),
    ("synced", {}, lambda c: None),
    ("synced", {}, _ours_off_catching_up),
    ("synced", {"force": True}, _dba),
    ("synced", {"force": True}, lambda c: (_dba(c), c.put_lease("other", "galera-node3", acquired=0, expires=300))),
]


def _comparable(result):
    after = result["after"]
    lease = result["lease"]
    return dict(changed=result["changed"], desynced=result["desynced"], previous_owner=result["previous_owner"],
                after={k: after[k] for k in ("desync", "desync_count", "local_state", "local_state_comment")},
                lease=(lease["owner"], lease["node"]) if lease else None,
                diff_before=result["diff"]["before"])


@pytest.mark.parametrize("state, options, setup", SCENARIOS)
def test_check_mode_predicts_the_real_run(monkeypatch, state, options, setup):
    checked = _fresh(monkeypatch, setup)
    initial = (checked.lease_row(), {n: (x.desync, x.other_desyncs) for n, x in checked.nodes.items()})
    h = Harness(checked, check_mode=True, **options)
    prediction = getattr(h, state)()
    assert (checked.lease_row(), {n: (x.desync, x.other_desyncs) for n, x in checked.nodes.items()}) == initial
    assert not any(s.startswith(("INSERT", "UPDATE", "DELETE", "SET GLOBAL", "CREATE")) for s in h.conn.statements)
    assert h.watchdog.armed == [] and h.watchdog.prepared == []

    real_cluster = _fresh(monkeypatch, setup)
    real = getattr(Harness(real_cluster, **options), state)()
    assert _comparable(prediction) == _comparable(real)


def test_predict_is_pure():
    snap = dict(desync=False, desync_count=0, local_state=4, local_state_comment="Synced", recv_queue=0)
    on = _desync.predict(snap, True)
    assert (on["desync"], on["desync_count"], on["local_state_comment"]) == (True, 1, "Donor/Desynced")
    off = _desync.predict(on, False)
    assert (off["desync"], off["desync_count"], off["local_state_comment"]) == (False, 0, "Synced")
    nested = _desync.predict(dict(on, desync_count=2), False)  # mariabackup's BACKUP STAGE still holds one
    assert (nested["desync_count"], nested["local_state_comment"]) == (1, "Donor/Desynced")
    assert snap["desync"] is False


def test_resync_after_the_watchdog_resynced_waits_for_synced_and_changes_nothing(cluster):
    # The watchdog turned wsrep_desync OFF and released the lease a moment ago; the node is still catching up
    # (Donor/Desynced, then Joined). state=synced returns only once it is Synced, so the role does not put the
    # node back in rotation before (the faults scenario's queue guard met it as "resynced (Donor/Desynced...").
    Harness(cluster).desynced()
    n3(cluster).set_desync(False)
    cluster.lease = None
    h = Harness(cluster)
    r = h.synced()
    assert not r["changed"] and not r["desynced"]
    assert r["after"]["local_state_comment"] == "Synced" and r["local_state_comment"]["before"] == "Donor/Desynced"
    assert not any(s.startswith("SET GLOBAL") for s in h.conn.statements)


def test_resync_of_a_node_that_never_gets_synced_after_the_watchdog_fails_naming_it(cluster):
    Harness(cluster).desynced()
    n3(cluster).set_desync(False)
    n3(cluster).catching_up = [2] * 100000
    cluster.lease = None
    with pytest.raises(GaleraError, match="did not reach Synced within timeout"):
        Harness(cluster, timeout=5).synced()
