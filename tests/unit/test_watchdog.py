# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The watchdog: its guards (pure), its loop against a fake cluster in fake time, and how it starts."""

from __future__ import annotations

import json
import os
import time

import pytest
from fake_galera import install, lost, once  # pylint: disable=import-error

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _lease, _proc, _watchdog, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

STATUS = {"wsrep_received": 1000, "wsrep_received_bytes": 1000 * 2048}  # 2 KiB per write-set
PROVIDER = {"gcs.recv_q_hard_limit": "1M"}
PLENTY = {"MemTotal": 8 << 30, "MemAvailable": 4 << 30}


@pytest.mark.parametrize("queue, max_queue, fraction, meminfo, fragment", [
    (0, 0, 0.5, PLENTY, None),
    (100, 0, 0.5, PLENTY, None),                        # ~200 KiB of 1 MiB: fine
    (300, 0, 0.5, PLENTY, "reached 50% of gcs.recv_q_hard_limit (1048576 bytes)"),
    (300, 0, 0, PLENTY, None),                          # fraction guard off
    (51, 50, 0, PLENTY, "receive queue 51 passed the guard of 50 write-sets"),
    (50, 50, 0, PLENTY, None),
    (10, 0, 0, {"MemTotal": 100, "MemAvailable": 4}, "memory is short (4 of 100 bytes available)"),
    (0, 0, 0, {"MemTotal": 100, "MemAvailable": 4}, None),  # no queue: memory is not ours to guard
])
def test_guard_reason(queue, max_queue, fraction, meminfo, fragment):
    reason = _watchdog.guard_reason({"recv_queue": queue}, STATUS, PROVIDER, max_queue, fraction, meminfo)
    if fragment is None:
        assert reason is None
    else:
        assert fragment in reason


def test_paths_are_stable_per_owner_and_node_and_private_to_run_dir():
    a = _watchdog.paths("owner-1", "node3")
    assert a == _watchdog.paths("owner-1", "node3")
    assert a != _watchdog.paths("owner-2", "node3")
    assert a != _watchdog.paths("owner-1", "node2")
    assert os.path.dirname(a["pid"]) == _watchdog.RUN_DIR


def test_pid_alive_and_read_pid(tmp_path):
    assert _watchdog.pid_alive(os.getpid())
    pid_file = tmp_path / "p.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert _watchdog.read_pid(str(pid_file)) == os.getpid()
    assert _watchdog.read_pid(str(tmp_path / "absent")) is None
    assert _watchdog.read_pid(None) is None
    pid_file.write_text("garbage")
    assert _watchdog.read_pid(str(pid_file)) is None


def test_pid_alive_false_for_a_reaped_child():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert not _watchdog.pid_alive(pid)


def test_guard_reason_cluster_shrank_below_min_cluster_size():
    snap = {"recv_queue": 0, "cluster_size": 2}
    reason = _watchdog.guard_reason(snap, STATUS, PROVIDER, 0, 0.5, PLENTY, 2)
    assert "shrank to 2 member(s)" in reason and "min_cluster_size=2" in reason
    assert _watchdog.guard_reason({"recv_queue": 0, "cluster_size": 3}, STATUS, PROVIDER, 0, 0.5, PLENTY, 2) is None


# -- the free-space and memory guards (pure) ------------------------------------------------------

GIB = 1 << 30


@pytest.mark.parametrize("total, min_bytes, fraction, expected", [
    (10 * GIB, GIB, 0.05, GIB),                   # 5% is 512 MiB: 1 GiB is larger
    (1000 * GIB, GIB, 0.05, 50 * GIB),            # 5% is larger
    (1000 * GIB, 0, 0, 0),                        # guard off
    (None, GIB, 0.05, GIB),
    (100 * GIB, 0, 0.1, 10 * GIB),
])
def test_min_free_threshold_is_the_larger(total, min_bytes, fraction, expected):
    assert _watchdog.min_free_threshold(total, min_bytes, fraction) == expected


@pytest.mark.parametrize("free, total, min_bytes, fraction, trips", [
    (GIB - 1, 10 * GIB, GIB, 0.05, True),
    (GIB, 10 * GIB, GIB, 0.05, False),
    (40 * GIB, 1000 * GIB, GIB, 0.05, True),       # 4% of a big disk: under the 5% floor
    (60 * GIB, 1000 * GIB, GIB, 0.05, False),
    (1, 10 * GIB, 0, 0, False),                    # disabled
])
def test_disk_guard_reason(free, total, min_bytes, fraction, trips):
    reason = _watchdog.disk_guard_reason(dict(free_bytes=free, total_bytes=total), "/var/lib/mysql/", min_bytes,
                                         fraction)
    assert bool(reason) is trips
    if trips:
        assert f"gcache.dir /var/lib/mysql/ has {free} bytes free" in reason
        assert "watchdog_min_free_bytes" in reason


def test_disk_guard_without_figures_does_not_trip():
    assert _watchdog.disk_guard_reason(None, "/var/lib/mysql/", GIB, 0.05) is None


def test_guard_reason_trips_on_disk_even_with_an_empty_queue():
    disk = dict(space=dict(free_bytes=100, total_bytes=10 * GIB), dir="/data/", min_bytes=GIB, min_fraction=0.05)
    reason = _watchdog.guard_reason({"recv_queue": 0, "cluster_size": 3}, STATUS, PROVIDER, 0, 0.5, PLENTY, 2, disk)
    assert "gcache.dir /data/ has 100 bytes free" in reason
    assert _watchdog.guard_reason({"recv_queue": 0, "cluster_size": 3}, STATUS, PROVIDER, 0, 0.5, PLENTY, 2,
                                  dict(disk, space=dict(free_bytes=5 * GIB, total_bytes=10 * GIB))) is None


@pytest.mark.parametrize("available, queue, trips", [(4, 10, True), (6, 10, False), (4, 0, False)])
def test_memory_guard(available, queue, trips):
    assert bool(_watchdog.memory_guard_reason({"MemTotal": 100, "MemAvailable": available}, queue)) is trips


# -- the watchdog loop against a fake cluster --------------------------------------------------------

OWNER = "t-owner"


def wd_params(**kw):
    base = dict(login_user=None, login_password=None, login_host="localhost", login_port=3306,
                login_unix_socket="/run/mysqld/mysqld.sock", config_file=None, ca_cert=None, client_cert=None,
                client_key=None, check_hostname=None, connect_timeout=5, owner=OWNER, lease_database="dbtools_galera",
                lease_ttl=60, min_cluster_size=2, max_recv_queue=None, drain_timeout=30, timeout=30, poll_interval=0.5,
                watchdog_hold_pid_file=None, watchdog_max_hold=21600, watchdog_max_recv_queue=0,
                watchdog_hard_limit_fraction=0.5, watchdog_min_free_bytes=GIB, watchdog_min_free_fraction=0.05,
                _gcache_local=True)
    base.update(kw)
    return base


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    monkeypatch.setattr(_watchdog, "RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(_watchdog, "LOG_FILE", str(tmp_path / "log" / "watchdog.log"))
    os.makedirs(tmp_path / "run")
    return install(monkeypatch)


def watchdog(cluster, **kw):
    session = _connection.Session(wd_params(**kw))
    return _watchdog.Watchdog(wd_params(**kw), OWNER, "galera-node3", session=session, clock=cluster.clock,
                              sleep=cluster.clock.sleep, meminfo=lambda: PLENTY)


def ours(cluster, desync=True, expires=60):
    cluster.node("galera-node3").desync = desync
    cluster.put_lease(OWNER, "galera-node3", acquired=0, expires=expires)


def holder_file(tmp_path):
    path = tmp_path / "tool.pid"
    path.write_text(str(os.getpid()))
    return str(path)


def test_armed_before_the_desync_it_waits(cluster):
    ours(cluster, desync=False)
    dog = watchdog(cluster)
    assert dog.step() is False
    node = cluster.node("galera-node3")
    assert not node.desync and cluster.lease_row()["owner"] == OWNER
    state = json.loads(open(dog.files["state"], encoding="utf-8").read())
    assert state["desync"] is False and state["guard"] is None


def test_expired_before_the_desync_releases_the_lease_and_touches_nothing(cluster):
    ours(cluster, desync=False, expires=-1)
    dog = watchdog(cluster)
    assert dog.step() is True
    assert cluster.lease is None and not cluster.node("galera-node3").desync
    assert [e["event"] for e in cluster.events] == ["watchdog_release"]
    assert not any(s.startswith("SET GLOBAL") for c in cluster.connections for s in c.statements)


def test_renews_an_unexpired_lease_for_a_live_holder(cluster, tmp_path):
    ours(cluster, expires=20)  # less than half of lease_ttl=60 left
    dog = watchdog(cluster, watchdog_hold_pid_file=holder_file(tmp_path))
    assert dog.step() is False
    assert cluster.lease["expires"] == pytest.approx(60)
    assert cluster.node("galera-node3").desync


def test_never_revives_an_expired_lease_even_for_a_live_holder(cluster, tmp_path):
    """The old code renewed without expires_at > now, reviving a lease another owner may be taking."""
    ours(cluster, expires=-1)
    dog = watchdog(cluster, watchdog_hold_pid_file=holder_file(tmp_path))
    assert dog.step() is True
    assert cluster.lease is None and not cluster.node("galera-node3").desync
    assert [e["event"] for e in cluster.events] == ["watchdog_resync"]


def test_renew_refuses_an_expired_lease(cluster):
    ours(cluster, expires=-1)
    conn = cluster.connect(unix_socket="/run/mysqld/mysqld.sock")
    lease = _lease.Lease(_wsrep.Node(conn), "dbtools_galera")
    assert lease.renew(OWNER, "galera-node3", 60) is False
    assert cluster.lease["expires"] == -1
    ours(cluster, expires=5)
    assert lease.renew(OWNER, "galera-node3", 60) is True


def test_disk_guard_trips_stops_the_holder_and_resyncs(cluster, monkeypatch, tmp_path):
    monkeypatch.setattr(_wsrep, "filesystem_space", lambda path: dict(free_bytes=10 << 20, total_bytes=100 * GIB))
    killed = []
    monkeypatch.setattr(_watchdog.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(_watchdog, "pid_alive", lambda pid: True)
    ours(cluster)
    dog = watchdog(cluster, watchdog_hold_pid_file=holder_file(tmp_path))
    assert dog.step() is True
    assert killed == [(os.getpid(), _watchdog.signal.SIGTERM)]
    assert not cluster.node("galera-node3").desync and cluster.lease is None
    assert [e["event"] for e in cluster.events] == ["guard", "watchdog_resync"]
    assert "has 10485760 bytes free" in cluster.events[0]["detail"]
    state = json.loads(open(dog.files["state"], encoding="utf-8").read())
    assert state["resynced"] is True and state["reason"].startswith("guard: the filesystem of gcache.dir")


def test_disk_guard_is_off_when_the_node_is_not_local(cluster, monkeypatch):
    monkeypatch.setattr(_wsrep, "filesystem_space", lambda path: dict(free_bytes=1, total_bytes=100 * GIB))
    ours(cluster)
    assert watchdog(cluster, _gcache_local=False).step() is False
    assert cluster.node("galera-node3").desync


def test_a_failing_state_write_never_stops_the_watchdog(cluster, monkeypatch, tmp_path):
    monkeypatch.setattr(_watchdog, "RUN_DIR", str(tmp_path / "gone"))  # the state file cannot be written
    ours(cluster, expires=-1)
    dog = watchdog(cluster)
    assert dog.step() is True  # it still resyncs
    assert not cluster.node("galera-node3").desync and cluster.lease is None
    log = open(_watchdog.LOG_FILE, encoding="utf-8").read()
    assert "cannot write the state file" in log


def test_a_failing_check_is_logged_and_retried(cluster):
    ours(cluster)
    cluster.node("galera-node3").fail["SHOW GLOBAL STATUS"] = once(lost())
    dog = watchdog(cluster)
    assert dog.step() is False
    assert "check failed, trying again" in open(_watchdog.LOG_FILE, encoding="utf-8").read()
    cluster.put_lease(OWNER, "galera-node3", acquired=0, expires=-1)
    assert dog.step() is True  # a new connection, and the work is done
    assert not cluster.node("galera-node3").desync


def test_disarms_when_the_lease_is_released(cluster):
    ours(cluster)
    dog = watchdog(cluster)
    assert dog.step() is False
    cluster.lease = None
    cluster.node("galera-node3").desync = False
    assert dog.step() is True
    assert not os.path.exists(dog.files["state"])


def test_waits_through_a_takeover_and_resyncs_when_the_row_is_put_back(cluster):
    ours(cluster, expires=-1)
    expired = cluster.lease_row()
    cluster.put_lease("taker", "galera-node1", acquired=5, expires=300)
    dog = watchdog(cluster)
    assert dog.step() is False  # the taker is about to resync this node
    assert cluster.node("galera-node3").desync
    cluster.lease = expired     # the taker could not reach this node and put the row back
    assert dog.step() is True
    assert not cluster.node("galera-node3").desync and cluster.lease is None


def test_after_the_takeover_grace_it_disarms_without_touching_the_node(cluster):
    ours(cluster, expires=-1)
    cluster.put_lease("taker", "galera-node1", acquired=5, expires=300)
    dog = watchdog(cluster)
    assert dog.step() is False
    cluster.clock.advance(dog.takeover_grace() + 1)
    assert dog.step() is True
    assert cluster.node("galera-node3").desync  # not ours to clear any more
    assert cluster.events[-1]["event"] == "watchdog_disarm_desynced"


# -- starting it ---------------------------------------------------------------------------------

def test_prepare_fails_cleanly_when_the_run_dir_cannot_be_made(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(_watchdog, "RUN_DIR", str(blocker / "run"))
    with pytest.raises(GaleraError, match="cannot prepare the desync watchdog.*watchdog: false.*Nothing was changed"):
        _watchdog.prepare(OWNER, "galera-node3")


def test_arm_reports_a_fork_failure(monkeypatch, tmp_path):
    monkeypatch.setattr(_watchdog, "RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(_watchdog, "LOG_FILE", str(tmp_path / "log" / "watchdog.log"))

    def no_fork(child, setup=None):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(_proc, "spawn_detached", no_fork)
    with pytest.raises(GaleraError, match="cannot start the desync watchdog"):
        _watchdog.arm(wd_params(), OWNER, "galera-node3")


def test_running_ignores_a_reused_pid(monkeypatch, tmp_path):
    monkeypatch.setattr(_watchdog, "RUN_DIR", str(tmp_path))
    files = _watchdog.paths(OWNER, "n")
    ident = _proc.identity()
    with open(files["pid"], "w", encoding="ascii") as handle:
        json.dump(ident, handle)
    if ident["boot_id"] is None:
        pytest.skip("no boot id on this machine")
    assert _watchdog.running(OWNER, "n") == os.getpid()
    with open(files["pid"], "w", encoding="ascii") as handle:
        json.dump(dict(ident, start_ticks=(ident["start_ticks"] or 0) + 1), handle)
    assert _watchdog.running(OWNER, "n") is None


def _wait_for(path, seconds=10.0):
    """Until ``path`` exists with some content (the child writes it after creating it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path):
            return True
        time.sleep(0.02)
    return False


def test_spawn_detached_reports_a_setup_failure_and_skips_the_child(tmp_path):
    ran = tmp_path / "ran"

    def setup():
        raise OSError(30, "Read-only file system")

    with pytest.raises(OSError, match="Read-only file system"):
        _proc.spawn_detached(lambda: ran.write_text("x"), setup)
    time.sleep(0.2)
    assert not ran.exists()


def test_spawn_detached_runs_the_child_after_its_setup(tmp_path):
    ran, ready = tmp_path / "ran", tmp_path / "ready"
    pid = _proc.spawn_detached(lambda: ran.write_text(str(os.getpid())), lambda: ready.write_text("ok"))
    assert ready.exists()  # setup is done when spawn_detached returns
    assert _wait_for(ran)
    assert int(ran.read_text()) == pid
