"""Every desync we make ends, and refusals change nothing, under faults (design.md invariants 1-8).

Each test drives the dbtools.galera.backup playbook against the real cluster and watches the
nodes from the host through their own SQL connections. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import admin_connection, kill_controller, playbook_command, playbook_env, run_playbook

testinfra_hosts = ["galera"]
NODES = ("galera-node1", "galera-node2", "galera-node3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tests", "tools"))

import freeze_applier  # noqa: E402


def one(conn, query, args=None):
    with conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchone()


class Cluster:
    """SQL connections from the host to every node."""

    def __init__(self):
        self.conns = {n: admin_connection(n) for n in NODES}

    def desynced(self) -> dict:
        return {n: int(one(c, "SELECT @@wsrep_desync")[0]) for n, c in self.conns.items()}

    def state(self, node) -> str:
        return one(self.conns[node], "SHOW STATUS LIKE 'wsrep_local_state_comment'")[1]

    def lease(self, node="galera-node3"):
        conn = self.conns[node]
        try:
            return one(conn, "SELECT node, owner, expires_at, UTC_TIMESTAMP(6) FROM dbtools_galera.desync_lease")
        except Exception:  # no table yet
            return None

    def events(self, node, event):
        return one(self.conns["galera-node1"], "SELECT COUNT(*) FROM dbtools_galera.desync_events "
                   "WHERE node = %s AND event = %s", (node, event))[0]

    def wait(self, predicate, timeout, what, proc=None, interval=0.5):
        """Poll until predicate() holds; fail early, with its output, if the playbook ``proc`` ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the playbook ended (rc {proc.returncode}) before {what}: "
                                     + proc.stdout.read()[-3000:])
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def close(self):
        for conn in self.conns.values():
            conn.close()


@pytest.fixture
def cluster():
    c = Cluster()
    assert sum(c.desynced().values()) == 0, "a test started with a desynced node"
    yield c
    c.close()


def tool_running(node) -> bool:
    return subprocess.run(["docker", "exec", node, "pgrep", "-x", "mariabackup"], capture_output=True,
                          check=False).returncode == 0


def start_backup(request, node, *extra, throttle=4):
    """The backup playbook in the background, throttled so it lasts some seconds (throttle 4: about two
    minutes of mariabackup here; 12: about 40 s; None: as fast as it goes)."""
    args = [f"--throttle={throttle}"] if throttle else []
    cmd = playbook_command(request, "dbtools.galera.backup", "-e", f"galera_backup_node={node}",
                           "-e", "galera_backup_sample_seconds=0.5", "-e", "galera_backup_dir=/var/backups/galera-faults",
                           "-e", json.dumps({"galera_backup_extra_args": args}), *extra)
    # Its own process group: a killed controller is ansible-playbook AND its forked workers.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=playbook_env(),
                            start_new_session=True)


def finish(proc, timeout=600):
    out, _err = proc.communicate(timeout=timeout)
    return proc.returncode, " ".join(out.split())


def assert_whole(cluster, node="galera-node3"):
    assert sum(cluster.desynced().values()) == 0
    assert cluster.state(node) == "Synced"
    assert cluster.lease() is None


def test_controller_killed_mid_backup_the_watchdog_resyncs(request, cluster):
    # The killed controller's runner finishes its backup before the watchdog resyncs: a shorter one.
    proc = start_backup(request, "galera-node3", "-e", "galera_backup_lease_ttl=15", throttle=12)
    cluster.wait(lambda: cluster.desynced()["galera-node3"] == 1 and tool_running("galera-node3"), 180,
                 "galera-node3 desynced with mariabackup running", proc)
    kill_controller(proc)
    killed = time.monotonic()
    proc.communicate(timeout=60)
    last_expiry = None
    synced_at = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        row = cluster.lease()
        if row:
            last_expiry = max(last_expiry or row[2], row[2])
        if cluster.desynced()["galera-node3"] == 0 and cluster.state("galera-node3") == "Synced" and row is None:
            synced_at = one(cluster.conns["galera-node1"], "SELECT UTC_TIMESTAMP(6)")[0]
            break
        time.sleep(0.5)
    assert synced_at is not None, "galera-node3 was not resynced within 300 s of the controller's death"
    late = (synced_at - last_expiry).total_seconds() if last_expiry else 0
    print(f"\ncontroller killed; node Synced {time.monotonic() - killed:.1f} s later, "
          f"{late:.1f} s after the last lease deadline {last_expiry}")
    assert late <= 60
    assert cluster.events("galera-node3", "watchdog_resync") >= 1
    log = subprocess.run(["docker", "exec", "galera-node3", "cat", "/var/log/dbtools-galera/watchdog.log"],
                         capture_output=True, text=True, check=True).stdout
    assert "the lease expired with the node still desynced" in log
    assert_whole(cluster)
    # The run ended on its own after the controller died: it removed its option file and key file, and
    # left its partial backup (marked by its run record) for the next run to sweep.
    secrets = subprocess.run(["docker", "exec", "galera-node3", "find", "/run/dbtools-galera", "/tmp", "-name",
                              "client.cnf", "-o", "-name", "backup.key"], capture_output=True, text=True, check=True)
    assert secrets.stdout == "", f"credentials left on the node: {secrets.stdout}"
    partials = subprocess.run(["docker", "exec", "galera-node3", "find", "/var/backups/galera-faults", "-maxdepth", "1",
                               "-name", "*.partial"], capture_output=True, text=True, check=True).stdout.split()
    assert len(partials) == 1, partials
    time.sleep(16)  # older than the next run's margin (its lease TTL)
    rc, output = finish(start_backup(request, "galera-node3", "-e", "galera_backup_lease_ttl=15", throttle=None))
    assert rc == 0, output[-3000:]
    left = subprocess.run(["docker", "exec", "galera-node3", "find", "/var/backups/galera-faults", "-maxdepth", "1",
                           "-name", "*.partial"], capture_output=True, text=True, check=True).stdout.split()
    assert left == [], f"the dead run's partial was not swept: {left}"
    assert_whole(cluster)


def test_a_watchdog_that_cannot_start_changes_nothing(request, cluster):
    """Review item 9: the watchdog is prepared and started before wsrep_desync=ON; when it cannot start
    (here its run directory is a file), the desync is refused with nothing changed."""
    node = "galera-node3"
    # An earlier test's watchdog disarms at its next check after its run ended, and removes its pid file from the
    # run directory then: moving the directory aside before that would leave the file behind.
    cluster.wait(lambda: subprocess.run(["docker", "exec", node, "sh", "-c", "ls /run/dbtools-galera/watchdog-*.pid"],
                                        capture_output=True, check=False).returncode != 0, 60,
                 "the watchdogs of earlier runs on galera-node3 to end")
    subprocess.run(["docker", "exec", node, "sh", "-c", "mv /run/dbtools-galera /run/dbtools-galera.saved 2>/dev/null;"
                    " touch /run/dbtools-galera"], check=True)
    try:
        run = subprocess.run(["ansible", "-i", request.config.option.ansible_inventory, node, "-m",
                              "dbtools.galera.galera_desync", "-a", "state=desynced owner=fault-test"],
                             capture_output=True, text=True, env=playbook_env(), check=False, timeout=120)
    finally:
        subprocess.run(["docker", "exec", node, "sh", "-c", "rm -f /run/dbtools-galera; "
                        "[ -d /run/dbtools-galera.saved ] && mv /run/dbtools-galera.saved /run/dbtools-galera; true"],
                       check=True)
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0, output[-2000:]
    assert "watchdog" in output and "Nothing was changed" in output, output[-2000:]
    assert_whole(cluster, node)


def test_two_runs_at_once_never_desync_two_nodes(request, cluster):
    samples = []
    stop = threading.Event()
    sampler_cluster = Cluster()

    def sample():
        while not stop.is_set():
            samples.append(sum(sampler_cluster.desynced().values()))
            time.sleep(0.1)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        runs = {n: start_backup(request, n, throttle=12) for n in ("galera-node2", "galera-node3")}
        results = {n: finish(p) for n, p in runs.items()}
    finally:
        stop.set()
        thread.join()
        sampler_cluster.close()
    codes = {n: r[0] for n, r in results.items()}
    print(f"\n{len(samples)} samples every 100 ms; desynced nodes seen: max {max(samples)}; return codes: {codes}")
    assert max(samples) == 1, "two nodes were desynced at once"
    winners = [n for n, (rc, _out) in results.items() if rc == 0]
    losers = [n for n, (rc, _out) in results.items() if rc != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    loser_output = results[losers[0]][1]
    assert any(text in loser_output for text in (
        "Another desync holds the lease: node " + winners[0],
        "another desync holds the cluster-wide lease: node " + winners[0],
        "another owner acquired the desync lease at the same moment: node " + winners[0])), loser_output[-2000:]
    assert_whole(cluster)


def test_a_dba_desync_is_refused_and_never_cleared(request, cluster):
    with cluster.conns["galera-node3"].cursor() as cur:
        cur.execute("SET GLOBAL wsrep_desync = ON")
    try:
        run = run_playbook(request, "dbtools.galera.backup", "-e", "galera_backup_sample_seconds=0.5")
        assert run.returncode != 0
        assert "The cluster is not healthy enough for a backup; nothing was changed" in run.output
        assert "galera-node3: Donor/Desynced" in run.output
        assert cluster.desynced() == {"galera-node1": 0, "galera-node2": 0, "galera-node3": 1}
        assert cluster.lease() is None
    finally:
        with cluster.conns["galera-node3"].cursor() as cur:
            cur.execute("SET GLOBAL wsrep_desync = OFF")
        cluster.wait(lambda: cluster.state("galera-node3") == "Synced", 120, "galera-node3 Synced")


def test_queue_guard_stops_the_backup_under_write_load(request, cluster):
    load = subprocess.Popen(
        ["docker", "exec", "galera-node1", "sysbench", "oltp_write_only", "--mysql-socket=/run/mysqld/mysqld.sock",
         "--mysql-user=root", "--mysql-db=sbtest", "--tables=4", "--table-size=20000", "--threads=2", "--time=120",
         "--mysql-ignore-errors=all", "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    frozen = {}
    try:
        proc = start_backup(request, "galera-node3", "-e", "galera_backup_max_recv_queue=5")
        # Under load the guard may trip, and the role finish, before a poll sees the desync; the
        # guard event asserted below proves the desync happened either way.
        cluster.wait(lambda: proc.poll() is not None or cluster.desynced()["galera-node3"] == 1, 180,
                     "galera-node3 desynced", interval=0.1)
        # On a busy machine the write load alone fills the queue; if the guard has not tripped
        # yet, stall the applier as a slow disk would, so the queue surely grows.
        time.sleep(3)
        if cluster.desynced()["galera-node3"] == 1:
            frozen = freeze_applier.freeze("galera-node3", 8)
        rc, output = finish(proc)
    finally:
        subprocess.run(["docker", "exec", "galera-node1", "pkill", "-x", "sysbench"], check=False)
        load.wait(timeout=60)
    print(f"\napplier frozen: {frozen or 'not needed'}; playbook rc {rc}; {output[output.find('PLAY RECAP'):]}")
    assert rc != 0
    assert "The backup of galera-node3 failed" in output
    assert "by the watchdog: guard: receive queue" in output or \
        "the watchdog ended the desync during the backup: guard: receive queue" in output, output[-3000:]
    assert "passed the guard of 5 write-sets" in output
    # Under this load the guard may trip before the runner made its partial directory: nothing to discard then.
    assert ("The node was resynced (Synced, wsrep_desync OFF); this run's partial backup was discarded" in output
            or "The node was resynced (Synced, wsrep_desync OFF); this run's partial backup was not kept" in output), \
        output[-3000:]
    assert cluster.events("galera-node3", "guard") >= 1
    assert_whole(cluster)


def test_losing_a_member_during_the_backup_resyncs_and_fails_safe(request, cluster):
    proc = start_backup(request, "galera-node3")
    cluster.wait(lambda: cluster.desynced()["galera-node3"] == 1 and tool_running("galera-node3"), 180,
                 "galera-node3 desynced with mariabackup running", proc)
    subprocess.run(["docker", "stop", "-t", "2", "galera-node1"], check=True, capture_output=True)
    try:
        rc, output = finish(proc)
        print(f"\nstopped galera-node1 during the backup; playbook rc {rc}")
        assert rc != 0
        assert "the cluster shrank to 2 member(s)" in output, output[-3000:]
        node3 = admin_connection("galera-node3")
        assert one(node3, "SELECT @@wsrep_desync")[0] == 0
        assert one(node3, "SHOW STATUS LIKE 'wsrep_local_state_comment'")[1] == "Synced"
        assert one(node3, "SELECT COUNT(*) FROM dbtools_galera.desync_lease")[0] == 0
        node3.close()
    finally:
        subprocess.run(["docker", "start", "galera-node1"], check=True, capture_output=True)
        subprocess.run(["docker", "exec", "galera-node1", "galera-node", "start"], check=True, capture_output=True)
    cluster.conns["galera-node1"] = admin_connection("galera-node1")
    cluster.wait(lambda: cluster.state("galera-node1") == "Synced", 180, "galera-node1 back and Synced")
    assert_whole(cluster)
