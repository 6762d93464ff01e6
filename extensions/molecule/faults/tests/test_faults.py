"""Every desync we make ends, and refusals change nothing, under faults (design.md invariants 1-8).

Each test drives the dbtools.galera.backup playbook against the real cluster and watches the
nodes from the host through their own SQL connections. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import admin_connection, node_of, playbook_command, playbook_env, run_playbook, sql

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


def start_backup(request, node, *extra):
    """The backup playbook in the background, throttled so it lasts some seconds."""
    cmd = playbook_command(request, "dbtools.galera.backup", "-e", f"galera_backup_node={node}",
                           "-e", "galera_backup_sample_seconds=0.5", "-e", "galera_backup_dir=/var/backups/galera-faults",
                           "-e", json.dumps({"galera_backup_extra_args": ["--throttle=4"]}), *extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=playbook_env())


def finish(proc, timeout=600):
    out, _err = proc.communicate(timeout=timeout)
    return proc.returncode, " ".join(out.split())


def assert_whole(cluster, node="galera-node3"):
    assert sum(cluster.desynced().values()) == 0
    assert cluster.state(node) == "Synced"
    assert cluster.lease() is None


def test_controller_killed_mid_backup_the_watchdog_resyncs(request, cluster):
    proc = start_backup(request, "galera-node3", "-e", "galera_backup_lease_ttl=15")
    cluster.wait(lambda: cluster.desynced()["galera-node3"] == 1 and tool_running("galera-node3"), 180,
                 "galera-node3 desynced with mariabackup running", proc)
    proc.send_signal(signal.SIGKILL)
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
        runs = {n: start_backup(request, n) for n in ("galera-node2", "galera-node3")}
        results = {n: finish(p) for n, p in runs.items()}
    finally:
        stop.set()
        thread.join()
        sampler_cluster.close()
    print(f"\n{len(samples)} samples every 100 ms; desynced nodes seen: max {max(samples)}; "
          f"return codes: { {n: r[0] for n, r in results.items()} }")
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
    print(f"\napplier frozen: {frozen or 'not needed'}; playbook rc {rc}")
    assert rc != 0
    assert "The backup of galera-node3 failed" in output
    assert "by the watchdog: guard: receive queue" in output or \
        "the watchdog ended the desync during the backup: guard: receive queue" in output, output[-3000:]
    assert "passed the guard of 5 write-sets" in output
    assert "The node was resynced (Synced, wsrep_desync OFF); this run's partial backup was discarded" in output
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
        assert "the cluster shrank to 2 member(s)" in output
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


def all_command_lines() -> list[str]:
    """argv of every process on the host, the containers' included (they share its /proc)."""
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    lines.append(handle.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines


def test_the_password_never_appears_in_process_lists_logs_or_output(request, cluster, tmp_path):
    """Invariant 7: a backup with a password login, run with -vvv while every process's argv is
    sampled, leaves the password nowhere: not in argv, task output, the node's files or logs."""
    secret = "Pw-" + os.urandom(12).hex()
    admin = cluster.conns["galera-node1"]
    with admin.cursor() as cur:
        cur.execute("CREATE OR REPLACE USER 'dbtools_secret'@'%%' IDENTIFIED BY %s", (secret,))
        cur.execute("GRANT ALL ON *.* TO 'dbtools_secret'@'%'")
    extra = tmp_path / "login.json"
    extra.write_text(json.dumps({"galera_login_user": "dbtools_secret", "galera_login_password": secret}))
    extra.chmod(0o600)
    seen, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            seen.extend(line for line in all_command_lines() if secret in line)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run = run_playbook(request, "dbtools.galera.backup", "-vvv", "-e", f"@{extra}",
                           "-e", "galera_backup_node=galera-node3", "-e", "galera_backup_sample_seconds=0.5",
                           "-e", "galera_backup_dir=/var/backups/galera-secret", "-e", "galera_backup_verify=restore")
        status_run = run_playbook(request, "dbtools.galera.status", "-vvv", "-e", f"@{extra}")
    finally:
        stop.set()
        sampler.join()
        with admin.cursor() as cur:
            cur.execute("DROP USER IF EXISTS 'dbtools_secret'@'%'")
    assert run.returncode == 0, run.output[-3000:]
    assert status_run.returncode == 0, status_run.output[-3000:]
    assert "dbtools_secret" in run.output, "the run did not use the password login"
    assert secret not in run.output and secret not in status_run.output, "the password is in the task output"
    assert not seen, f"the password was in a process's argv: {seen[:3]}"
    # the pattern comes on stdin, so this check puts no password on a command line either
    found = subprocess.run(["docker", "exec", "-i", "galera-node3", "sh", "-c",
                            "grep -rlF -f - /var/backups/galera-secret /var/log/dbtools-galera /run/dbtools-galera "
                            "/tmp /var/log/mysql /var/lib/mysql/*.err 2>/dev/null"],
                           input=secret, capture_output=True, text=True, check=False)
    assert found.returncode in (1, 2) and not found.stdout, f"the password is in files on the node: {found.stdout}"
    subprocess.run(["docker", "exec", "galera-node3", "rm", "-rf", "/var/backups/galera-secret"], check=True)
    print(f"\n-vvv backup and status runs with a password login: {len(run.output)} characters of output, "
          "the password in none of them, in no argv sampled every 50 ms, in no file on the node")
    assert_whole(cluster)


BAD_INPUTS = [
    (["-e", "galera_backup_method=bogus"], "value of galera_backup_method must be one of"),
    (["-e", "galera_backup_verify=full"], "value of galera_backup_verify must be one of"),
    (["-e", "galera_backup_retention=many"], "galera_backup_retention"),
    (["-e", "galera_backup_node=no-such-node"], "galera_backup_node=no-such-node is not a host of this play"),
    (["-e", "galera_backup_method=xtrabackup"], "lacks xtrabackup"),
    (["-e", "galera_backup_login_user=dbtools_admin", "-e", "galera_backup_login_password=wrong"], "Access denied"),
    (["-e", "galera_backup_login_unix_socket=/nonexistent/mysqld.sock"], "cannot connect"),
    (["-e", "galera_backup_cluster_size=4"], "Expected 4 Synced members of one Primary cluster"),
    (["-e", "galera_backup_min_cluster_size=3", "-e", "galera_backup_node=galera-node3"],
     "fewer than min_cluster_size=3"),
    (["-e", "galera_backup_method=mysqldump", "-e", "galera_backup_verify=prepare"], "needs a physical backup"),
    (["-e", "galera_backup_dir=/proc/galera"], "galera_backup_dir=/proc/galera lies inside a system directory"),
    (["-e", "galera_backup_lease_ttl=-5"], "galera_backup_lease_ttl=-5 must be at least 10"),
    (["-e", "galera_backup_drain_timeout=-1"], "galera_backup_drain_timeout=-1 must not be negative"),
    (["-e", "galera_backup_sample_seconds=-2"], "galera_backup_sample_seconds=-2 must not be negative"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[" ".join(e[1::2]) for e, _msg in BAD_INPUTS])
def test_bad_input_is_refused_naming_the_cause_and_changes_nothing(request, cluster, nodes, extra, message):
    before = {n.backend.get_pytest_id(): n.run("ls -1 /var/backups 2>/dev/null; ls -1 /var/backups/galera "
                                               "2>/dev/null").stdout for n in nodes}
    run = run_playbook(request, "dbtools.galera.backup", "-e", "galera_backup_sample_seconds=0.5", *extra)
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]
    assert_whole(cluster)
    after = {n.backend.get_pytest_id(): n.run("ls -1 /var/backups 2>/dev/null; ls -1 /var/backups/galera "
                                              "2>/dev/null").stdout for n in nodes}
    for host_id, listing in after.items():
        # Only a failure record may appear (for a refusal after the desync step).
        new = set(listing.split()) - set(before[host_id].split())
        assert all(name.endswith(".failed.json") for name in new), new
    node3 = node_of(nodes, "galera-node3")
    assert sql(node3, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP%'") == [["0"]]
