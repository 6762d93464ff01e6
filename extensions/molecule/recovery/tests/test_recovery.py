"""Recovery: restore_cluster from the SSH store, rebuild_node by IST, the gcache-gap refusal, the SST fallback,
the restore drill and bad input, read from the nodes, the store container and what the converge recorded."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import subprocess

import pytest
import testinfra

from conftest import node_of as node, playbook_env, sql, status

testinfra_hosts = ["galera"]
STORE_DIR = "/srv/backups/recovery"
HOSTS = ("galera-node1", "galera-node2", "galera-node3")
KEY = "dbtools-test-recovery-key-4c1f7a9e2b6d8035e7a1c4f9b2d6e803"
WRONG_KEY = "not-the-key-of-these-backups"


@pytest.fixture(scope="module")
def results():
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "recovery", "results.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def store():
    return testinfra.get_host("docker://galera-recovery-store")


@pytest.fixture(scope="module")
def manifest(store, results):
    backup_id = results["restore"]["galera-node1"]["plan"]["backup"]["id"]
    out = store.run(f"cat {STORE_DIR}/{backup_id}/manifest.json")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def checksums_of(lines) -> dict:
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines if "\t" in line}


def test_three_members_synced_in_one_primary_component(nodes):
    uuids = set()
    for host in nodes:
        got = status(host, "wsrep_cluster_size", "wsrep_local_state_comment", "wsrep_cluster_status",
                     "wsrep_cluster_state_uuid")
        assert got["wsrep_cluster_size"] == "3" and got["wsrep_local_state_comment"] == "Synced"
        assert got["wsrep_cluster_status"] == "Primary"
        uuids.add(got["wsrep_cluster_state_uuid"])
    assert len(uuids) == 1


def test_the_first_node_bootstrapped_at_the_backups_position_and_the_joiners_joined_by_ist(nodes, results, manifest):
    restore = results["restore"]
    plan = restore["galera-node1"]["plan"]
    assert plan["first"] == "galera-node1" and plan["joiners"] == ["galera-node2", "galera-node3"]
    position = manifest["position"]
    assert plan["backup"]["position"]["seqno"] == position["seqno"] > 0
    for joiner in ("galera-node2", "galera-node3"):
        joined = restore[joiner]["joined"]["joined"]
        assert joined["method"] == "IST", joined
        assert joined["local_position"] == f"{position['cluster_uuid']}:{position['seqno']}"
        # The server's own words, independent of the collection's reading of them.
        log = node(nodes, joiner).run("cat /var/log/mysql/error.log").stdout
        assert f"Found saved state: {position['cluster_uuid']}:{position['seqno']}, safe_to_bootstrap: 0" in log
        assert f"SST received: {position['cluster_uuid']}:{position['seqno']}" in log
        assert "Receiving IST:" in log and "IST received:" in log
    first_log = node(nodes, "galera-node1").run("cat /var/log/mysql/error.log").stdout
    assert f"Found saved state: {position['cluster_uuid']}:{position['seqno']}, safe_to_bootstrap: 1" in first_log


def test_every_table_equals_the_backups_verification_on_all_three_nodes(results, manifest):
    recorded = manifest["verify"]["checksums"]
    assert manifest["verify"]["level"] == "restore" and len(recorded) == manifest["tables"]
    assert "recovery.sbtest1" in recorded and "recovery.sbtest2" in recorded
    for host in HOSTS:
        got = checksums_of(results["restore"][host]["checksums"])
        for key, want in recorded.items():
            if key == "dbtools_galera.desync_lease":
                continue  # the backup's lease row, cleared by the restore (compared across the nodes)
            assert got.get(key) == str(want["checksum"]), f"{host} {key}: {got.get(key)} != {want['checksum']}"
    leases = {checksums_of(results["restore"][h]["checksums"]).get("dbtools_galera.desync_lease") for h in HOSTS}
    assert len(leases) == 1
    assert results["restore"]["galera-node1"]["verdict"]["ok"]


def test_the_backups_lease_row_was_cleared_and_no_lease_is_held(nodes, results):
    lease = results["restore"]["galera-node1"]["lease"]
    assert lease["changed"] and lease["lease"]["node"] == "galera-node3" and lease["cleared_at"]
    for host in nodes:
        assert sql(host, "SELECT COUNT(*) FROM dbtools_galera.desync_lease") == [["0"]]


def test_the_old_data_directories_were_moved_aside_never_deleted(nodes, results):
    for host in HOSTS:
        aside = results["restore"][host]["swap"]["aside"]
        assert aside.startswith("/var/lib/mysql.dbtools-")
        marker = node(nodes, host).run(f"cat {aside}/WIPED-BY-RECOVERY-TEST")
        assert marker.rc == 0 and marker.stdout.strip() == host


def test_node3_was_rebuilt_by_ist_and_every_node_holds_the_same_data(nodes, results):
    rebuild = results["rebuild"]
    assert rebuild["plan"]["mode"] == "ist" and rebuild["joined"]["joined"]["method"] == "IST"
    assert rebuild["verdict"]["ok"] and not rebuild["verdict"]["differ"]
    aside = rebuild["swap"]["aside"]
    assert node(nodes, "galera-node3").run(f"cat {aside}/WIPED-FOR-REBUILD").stdout.strip() == "rebuild"
    # Now, live: the 1000 rows written after the restore are on every node, and every table agrees.
    query = "CHECKSUM TABLE recovery.after_restore, recovery.sbtest1, recovery.bulk EXTENDED"
    figures = [sql(host, query) for host in nodes]
    assert figures[0] == figures[1] == figures[2]
    assert all(sql(host, "SELECT COUNT(*) FROM recovery.after_restore") == [["1000"]] for host in nodes)


def test_with_the_gap_outside_gcache_the_rebuild_refused_saying_by_how_much(results):
    text = " ".join(results["gap_output"].split())
    assert "Refused to rebuild galera-node3; Nothing was changed" in text
    assert "IST is impossible" in text and "gcache.size 1.0 MiB" in text and "write-sets behind the cluster" in text
    assert "galera_rebuild_fresh_backup=true" in text and "galera_restore_allow_sst=true" in text


def test_the_sst_fallback_joined_by_sst_and_is_timed_against_the_ist(results):
    sst, ist = results["sst"]["joined"]["joined"], results["rebuild"]["joined"]["joined"]
    assert results["sst"]["plan"]["mode"] == "sst" and sst["method"] == "SST"
    assert results["sst"]["verdict"]["ok"]
    assert isinstance(sst["log_seconds"], int) and isinstance(ist["log_seconds"], int)
    print(f"node3 from start to Synced: IST {ist['log_seconds']} s, SST of the same data {sst['log_seconds']} s")


def test_the_drill_recorded_its_success_and_the_freshness_check_reads_it(store, results):
    record = json.loads(store.run("cat /var/lib/dbtools-galera/drill-dbtools.json").stdout)
    assert record["result"] == "ok" and record["verify"]["checksums"] > 0, record
    assert record["backup"]["id"] == results["restore"]["galera-node1"]["plan"]["backup"]["id"]
    assert store.run("ls /var/backups/galera-restore").stdout.strip() == ""  # its scratch copy is gone
    fresh, stale = results["drill_fresh"], results["drill_stale"]
    assert fresh["failing"] == [] and fresh["summary"].startswith("OK: cluster dbtools last successful drill 0.0 h ago")
    assert stale["failing"] == ["drill_stale"] and stale["summary"].startswith("CRITICAL")


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, nothing changed (with the disaster confirmation given, the dangerous mode)

def run_playbook(request, playbook, *extra):
    store_vars = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "recovery", "vars.json")
    run = subprocess.run(["ansible-playbook", "-i", request.config.option.ansible_inventory, playbook,
                          "-e", f"@{store_vars}", *extra],
                         capture_output=True, text=True, timeout=600, check=False, env=playbook_env())
    run.output = " ".join((run.stdout + "\n" + run.stderr).split())
    return run


def fingerprint(nodes) -> list:
    out = []
    for host in nodes:
        out.append((host.run("stat -c %i /var/lib/mysql && ls -d /var/lib/mysql.dbtools-* && galera-node running "
                             "&& ls /var/backups/galera-restore 2>/dev/null; true").stdout,
                    sql(host, "SELECT @@wsrep_cluster_name, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                              "WHERE VARIABLE_NAME = 'WSREP_CLUSTER_SIZE'")))
    return out


@pytest.fixture(scope="module")
def crafted(nodes):
    """Backups that must be refused, beside a copy of the real one on galera-node3: one of another cluster, an
    incremental whose parent is missing."""
    node3 = node(nodes, "galera-node3")
    backup_id = node3.run("ls /var/backups/galera-recovery").stdout.split()[0]
    script = f"""
import json, os, shutil
src = '/var/backups/galera-recovery/{backup_id}'
top = '/var/backups/recovery-bad'
os.makedirs(top, exist_ok=True)
stamp = '{backup_id}'.split('_')[-1]
for new, change in (('other_galera-node3_' + stamp, dict(cluster=dict(name='other', state_uuid=None))),
                    ('dbtools_galera-node3_20261231T000000Z-deadbeef',
                     dict(type='incremental', parent='dbtools_galera-node3_20200101T000000Z-00000000',
                          chain=['dbtools_galera-node3_20200101T000000Z-00000000',
                                 'dbtools_galera-node3_20261231T000000Z-deadbeef']))):
    dst = os.path.join(top, new)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    with open(os.path.join(dst, 'manifest.json')) as f:
        m = json.load(f)
    m.update(change, id=new)
    with open(os.path.join(dst, 'manifest.json'), 'w') as f:
        json.dump(m, f)
print(stamp)
"""
    out = node3.run(f"python3 -c {shlex.quote(script)}")
    assert out.rc == 0, out.stderr
    return dict(other="other_galera-node3_" + out.stdout.strip(), orphan="dbtools_galera-node3_20261231T000000Z-deadbeef")


LOCAL_BAD = ("-e", "galera_restore_source=local", "-e", "galera_restore_dir=/var/backups/recovery-bad", "-e",
             "galera_restore_first_node=galera-node3", "-e", "galera_restore_joiners=sst", "-e",
             "galera_restore_confirm=dbtools")


CASES = ("running", "wrong_key", "other_cluster", "missing_member", "datadir_root")


@pytest.fixture(scope="module")
def refusals(nodes, request, crafted):
    """Every bad input run at once (each must change nothing, so they cannot disturb each other), with the
    nodes' fingerprint before and after."""
    args = {
        "running": ("-e", "galera_restore_source=recovery-store"),
        "wrong_key": ("-e", "galera_restore_source=recovery-store", "-e", "galera_restore_confirm=dbtools",
                      "-e", f"galera_restore_encrypt_key={WRONG_KEY}"),
        "other_cluster": LOCAL_BAD + ("-e", f"galera_restore_id={crafted['other']}"),
        "missing_member": LOCAL_BAD + ("-e", f"galera_restore_id={crafted['orphan']}"),
        "datadir_root": ("-e", "galera_restore_source=recovery-store", "-e", "galera_restore_confirm=dbtools",
                         "-e", "galera_restore_datadir=/"),
        # Not bad input: the dangerous mode in check mode, which must only say what it would do.
        "check_mode": ("--check", "-e", "galera_restore_source=recovery-store", "-e", "galera_restore_confirm=dbtools"),
    }
    before = fingerprint(nodes)
    with concurrent.futures.ThreadPoolExecutor(len(args)) as pool:
        runs = dict(zip(args, pool.map(lambda case: run_playbook(request, "dbtools.galera.restore_cluster",
                                                                 *args[case]), args)))
    return dict(runs=runs, before=before, after=fingerprint(nodes))


EXPECTED = {
    "running": ["run a server in a Primary component of cluster dbtools", "galera_restore_confirm=dbtools"],
    "wrong_key": ["wrong key"],
    "other_cluster": ["is of cluster 'other'"],
    "missing_member": ["dbtools_galera-node3_20200101T000000Z-00000000, the parent of", "is missing"],
    "datadir_root": ["datadir='/'"],
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_clearly_and_changes_nothing(refusals, case):
    run = refusals["runs"][case]
    assert run.returncode != 0
    for text in EXPECTED[case]:
        assert text in run.output, run.output[-3000:]
    assert "othing was changed" in run.output
    assert WRONG_KEY not in run.output and KEY not in run.output
    assert refusals["after"] == refusals["before"]


def test_check_mode_of_a_disaster_restore_says_what_it_would_do_and_changes_nothing(refusals):
    run = refusals["runs"]["check_mode"]
    assert run.returncode == 0, run.output[-3000:]
    assert "Check mode: nothing was changed. The restore would:" in run.output
    for host in HOSTS:
        assert f"{host}: would fetch and prepare" in run.output
    assert "would move /var/lib/mysql aside to /var/lib/mysql.dbtools-" in run.output
    assert "once its running server is stopped" in run.output
    assert refusals["after"] == refusals["before"]
