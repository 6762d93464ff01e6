"""The chaos soak's own rules (tests/soak): its draws replay from the seed, and its judgements (ledger,
leftovers, health, outcomes, secrets) flag what they must and only that. A checker that cannot fail hides
the bugs the soak exists to find, so each rule is tried on the case it must catch and the case it must pass."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "soak"))

import judge  # pylint: disable=wrong-import-position
import node_inspect  # pylint: disable=wrong-import-position
import plan  # pylint: disable=wrong-import-position
import report  # pylint: disable=wrong-import-position

# ---------------------------------------------------------------------------------------------
# Draws


@pytest.mark.parametrize("seed", [1, "20261202", "hostile $(id) '\n"])
def test_every_block_of_cycles_meets_every_fault_once(seed):
    deck = plan.deck(seed, plan.FAULTS, 5 * len(plan.FAULTS))
    for start in range(0, len(deck), len(plan.FAULTS)):
        assert sorted(deck[start:start + len(plan.FAULTS)]) == sorted(plan.FAULTS)
    assert Counter(deck) == {f: 5 for f in plan.FAULTS}


def test_a_cycle_replays_from_the_seed_alone():
    first = [plan.draw(42, i, plan.FAULTS).as_dict() for i in range(1, 30)]
    again = [plan.draw(42, i, plan.FAULTS).as_dict() for i in range(1, 30)]
    assert first == again
    assert plan.draw(42, 17, plan.FAULTS).as_dict() == first[16]  # --only 17 draws what cycle 17 of the soak drew
    assert [c["fault"] for c in first] != [plan.draw(43, i, plan.FAULTS).fault for i in range(1, 30)]


def test_a_subset_of_faults_is_all_that_is_drawn():
    drawn = {plan.draw(5, i, ["none", "network_cut"]).fault for i in range(1, 20)}
    assert drawn == {"none", "network_cut"}
    with pytest.raises(ValueError):
        plan.deck(5, [], 3)


def test_draws_are_combinations_the_role_accepts_and_name_no_secret():
    for i in range(1, 400):
        c = plan.draw("combos", i, plan.FAULTS)
        assert c.node in plan.BACKUP_NODES
        if c.method != "mariabackup":
            assert c.type == "full" and c.verify in ("checksum", "restore") and not c.throttle
        if c.method == "mydumper":
            assert not c.encrypt
        if c.encrypt:
            assert c.compress == "zstd"
        if c.fault == "none":
            assert c.phase is None
        else:
            assert c.phase in plan.FAULT_PHASES[c.fault]
            assert 0 <= c.offset <= plan.offset_bound(c.phase, c.method, c.verify, c.throttle) <= 20
        if c.fault == "tool_kill":
            assert c.phase in ("tool", "verify")
        if c.fault in ("member_restart", "dba_desync"):
            assert c.params["member"] != c.node
        if c.fault == "network_cut":
            assert 5 <= c.params["seconds"] <= 30
        variables = c.role_vars()
        assert all(k.startswith("galera_backup_") for k in variables)
        assert not any("key" in k or "password" in k for k in variables)


@pytest.mark.parametrize("ours, desync, state, phase", [
    (False, False, None, "before_desync"),
    (True, True, None, "tool"),
    (True, True, {"step": "listing tables"}, "tool"),
    (True, True, {"step": "running mariabackup"}, "tool"),
    (True, True, {"step": "checksumming"}, "verify"),
    (True, True, {"step": "verify: starting the restored copy"}, "verify"),
    (False, True, {"step": "checksumming"}, "verify"),      # the lease lost mid-run: still the run's phase
    (True, True, {"step": "done", "done": True}, "drain"),
    (False, True, {"step": "done", "done": True}, "drain"),  # OFF not set yet
    (False, False, {"step": "done", "done": True}, "after"),
])
def test_the_phase_is_read_from_the_lease_the_node_and_the_runner(ours, desync, state, phase):
    assert plan.classify_phase(ours, desync, state) == phase


# ---------------------------------------------------------------------------------------------
# The ledger

def b(hour: int, chain=None, minute: int = 0) -> tuple:
    backup_id = f"dbtools_galera-node3_20261202T{hour:02d}{minute:02d}00Z-0000000{hour % 10}"
    return backup_id, dict(started_at=f"2026-12-02T{hour:02d}:{minute:02d}:00Z", chain=chain or [backup_id])


def test_retention_may_remove_only_what_is_beyond_the_newest_and_their_chains():
    ledger = judge.Ledger(retention=2)
    full, full_s = b(1)
    inc, inc_s = b(2, chain=[full])
    inc_s["chain"] = [full, inc]
    third, third_s = b(3)
    fourth, fourth_s = b(4)
    assert ledger.observe(1, "n3", {full: full_s})["violations"] == []
    assert ledger.observe(2, "n3", {full: full_s, inc: inc_s})["violations"] == []
    # With fourth, the newest two are third and fourth; inc is in neither's chain, so inc and full may go.
    assert ledger.observe(3, "n3", {full: full_s, inc: inc_s, third: third_s})["violations"] == []
    out = ledger.observe(4, "n3", {third: third_s, fourth: fourth_s})
    assert out["violations"] == [] and out["new"] == [fourth] and sorted(out["removed"]) == sorted([full, inc])


def test_removing_the_parent_of_a_kept_incremental_is_a_violation():
    ledger = judge.Ledger(retention=1)
    full, full_s = b(1)
    inc, inc_s = b(2)
    inc_s["chain"] = [full, inc]
    ledger.observe(1, "n3", {full: full_s})
    out = ledger.observe(2, "n3", {inc: inc_s})  # retention 1 keeps inc, and inc needs full
    assert len(out["violations"]) == 1 and full in out["violations"][0] and "had to keep" in out["violations"][0]
    assert full in ledger.lost


def test_a_backup_that_disappears_without_a_new_one_there_is_a_violation():
    ledger = judge.Ledger(retention=1)
    one, one_s = b(1)
    two, two_s = b(2)
    ledger.observe(1, "n3", {one: one_s, two: two_s})
    out = ledger.observe(2, "n3", {two: two_s})
    assert "published nothing" in out["violations"][0]
    # The same removal with a new backup there is retention's right.
    ledger = judge.Ledger(retention=1)
    three, three_s = b(3)
    ledger.observe(1, "n3", {one: one_s, two: two_s})
    assert ledger.observe(2, "n3", {two: two_s, three: three_s})["violations"] == []


def test_directories_of_two_nodes_are_judged_apart_and_a_reappearance_is_flagged():
    ledger = judge.Ledger(retention=1)
    one, one_s = b(1)
    two, two_s = b(2)
    ledger.observe(1, "n2", {one: one_s})
    assert ledger.observe(2, "n3", {two: two_s})["violations"] == []  # n3's retention never touches n2
    three, three_s = b(3)
    ledger.observe(3, "n3", {three: three_s})
    assert "reappeared" in ledger.observe(4, "n3", {three: three_s, two: two_s})["violations"][0]


# ---------------------------------------------------------------------------------------------
# Leftovers

STARTS = {"n3": [(3, None), (5, None)]}


@pytest.mark.parametrize("item, cycle, expected", [
    (dict(kind="option_file", name="run-1/client.cnf", cycle=2, alive=False), 3, "outlived its run"),
    (dict(kind="key_file", name="run-1/backup.key", cycle=2, alive=False), 3, "outlived its run"),
    (dict(kind="login_dir", name="/tmp/dbtools-galera-login.x", cycle=1, alive=False), 2, "outlived its run"),
    (dict(kind="option_file", name="run-1/client.cnf", cycle=3, alive=False), 3, None),
    (dict(kind="partial", name="x.partial", cycle=2, alive=False), 3, "after the run of cycle 3"),
    (dict(kind="partial", name="x.partial", cycle=3, alive=False), 4, None),      # no later start on n3 yet
    (dict(kind="partial", name="x.partial", cycle=3, alive=False), 5, "after the run of cycle 5"),
    (dict(kind="run_dir", name="run-2", cycle=4, alive=False), 4, None),
    (dict(kind="verify_copy", name="x.partial.verify", cycle=1, alive=False), 3, "after the run of cycle 3"),
    (dict(kind="partial", name="x.partial", cycle=3, alive=True), 3, "still alive"),
    (dict(kind="run_dir", name="run-9", cycle=None, alive=False), 3, "no known cycle"),
])
def test_leftovers_of_earlier_cycles_are_flagged_by_what_they_are(item, cycle, expected):
    found = judge.leftover_violations(cycle, "n3", [item], STARTS)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_a_dead_runs_leftover_younger_than_the_margin_may_stay_until_a_later_start():
    """The product sweeps a dead run's leftover only once it is older than the lease TTL (docs/backup.md): a run
    that started 20 s after it changed may leave it; one that started 40 s after may not."""
    item = dict(kind="run_dir", name="run-9843f158", cycle=14, alive=False, mtime=1000.0)
    assert judge.leftover_violations(15, "n2", [item], {"n2": [(15, 1020.0)]}, 30) == []
    found = judge.leftover_violations(17, "n2", [item], {"n2": [(15, 1020.0), (17, 1040.0)]}, 30)
    assert len(found) == 1 and "after the run of cycle 17" in found[0], found


def test_a_partial_on_another_node_is_not_swept_by_runs_elsewhere():
    item = dict(kind="partial", name="x.partial", cycle=1, alive=False)
    assert judge.leftover_violations(5, "n2", [item], STARTS) == []


def test_a_moment_belongs_to_the_cycle_that_had_started():
    starts = [(1, 1000.0), (2, 1100.0), (3, 1300.0)]
    assert judge.cycle_of(1050, starts) == 1
    assert judge.cycle_of(1099, starts) == 2      # within the few seconds of slack before cycle 2
    assert judge.cycle_of(5000, starts) == 3
    assert judge.cycle_of(900, starts) is None
    assert judge.cycle_of(None, starts) is None
    assert judge.id_epoch("c_galera-node3_20261202T010203Z-0a1b2c3d") == 1796173323.0
    assert judge.id_epoch("not an id") is None


# ---------------------------------------------------------------------------------------------
# Health

def st(**changes):
    base = dict(wsrep_local_state_comment="Synced", wsrep_cluster_status="Primary", wsrep_ready="ON",
                wsrep_cluster_size="3", wsrep_desync="OFF", wsrep_cluster_state_uuid="u1")
    base.update(changes)
    return base


@pytest.mark.parametrize("nodes, lease, expected", [
    ({"a": st(), "b": st(), "c": st()}, None, []),
    ({"a": st(), "b": st(), "c": st()}, dict(node="c", owner="o", expired=True), []),
    ({"a": st(), "b": st(), "c": st(wsrep_desync="ON", wsrep_local_state_comment="Donor/Desynced")}, None,
     ["c is Donor/Desynced", "c has wsrep_desync=ON"]),
    ({"a": st(), "b": st(), "c": None}, None, ["c unreachable"]),
    ({"a": st(wsrep_cluster_size="2"), "b": st(wsrep_cluster_size="2"),
      "c": st(wsrep_cluster_status="non-Primary", wsrep_cluster_size="1", wsrep_ready="OFF")}, None,
     ["a sees 2 members", "b sees 2 members", "c is in a non-Primary component", "c not ready", "c sees 1 members"]),
    ({"a": st(), "b": st(), "c": st(wsrep_cluster_state_uuid="u2")}, None, ["the nodes are in 2 clusters"]),
    ({"a": st(), "b": st(), "c": st()}, dict(node="c", owner="soak-1-001-a", expired=False),
     ["a live lease: node c owner soak-1-001-a"]),
])
def test_the_cluster_is_whole_only_when_every_condition_holds(nodes, lease, expected):
    assert judge.unhealthy(nodes, lease) == expected


def test_desynced_nodes_are_named():
    assert judge.desynced_nodes({"a": st(), "b": st(wsrep_desync="ON"), "c": None}) == ["b"]


# ---------------------------------------------------------------------------------------------
# Secrets

def test_a_secret_is_found_wherever_it_is_and_only_there():
    secrets = {"password": "Soak-abc", "key": "soak-key-xyz", "unset": ""}
    texts = {"out.log": "ok ... Soak-abc ...", "clean.log": "Soak-ab c", "key.txt": "xx soak-key-xyz"}
    assert sorted(judge.secret_hits(texts, secrets)) == [("key.txt", "key"), ("out.log", "password")]


# ---------------------------------------------------------------------------------------------
# A run's outcome, from ansible-playbook's output (excerpts of real soak outputs)

ROLE = "TASK [dbtools.galera.galera_backup : {}] ***\n"
START = "Desync the node under the cluster-wide lease and start the backup run (tool, checksums, verification)"
PUBLISHED_RUN = (ROLE.format(START) + "changed: [galera-node2]\n\n" + ROLE.format("Report the backup") + 'ok: [galera-node2] => {\n'
                 '    "msg": "Backup dbtools_galera-node2_20261202T022026Z-7e51cc73 (full, mysqldump, 8.12 MB, verified: '
                 'checksum) at 59970d73:2283; 2.2 s in the tool"\n}\n\n'
                 + ROLE.format("Fail the play now that the node is back") + "skipping: [galera-node2]\n")
REFUSED_RUN = (ROLE.format("Refuse a backup the cluster or the settings are not fit for (nothing was changed)")
               + 'fatal: [galera-node1]: FAILED! => {\n    "changed": false,\n    "msg": "The cluster is not healthy '
               'enough for a backup; nothing was changed. Expected 3 Synced members of one Primary cluster: galera-node3 '
               'has wsrep_desync=ON (desynced by someone else)"\n}\n'
               + 'fatal: [galera-node2]: FAILED! => {"changed": false, "msg": "The cluster is not healthy enough"}\n')
LOST_RACE = (ROLE.format(START)
             + 'fatal: [galera-node3]: FAILED! => {"changed": false, "msg": "another desync holds the cluster-wide '
             'lease: node galera-node2 desynced by owner \'soak-1-004-a\'. Nothing was changed."}\n\n'
             + ROLE.format("Fail the play now that the node is back")
             + 'fatal: [galera-node3]: FAILED! => {"changed": false, "msg": "The backup of galera-node3 failed at '
             f'\\"{START}\\": another desync holds the cluster-wide lease: node '
             'galera-node2. The node was resynced"}\n')
FAILED_RUN = (ROLE.format(START) + "changed: [galera-node3]\n"
              + ROLE.format("Wait for the backup run (the watchdog renews the lease while it runs)")
              + 'fatal: [galera-node3]: FAILED! => {"changed": false, "msg": "the backup runner (pid 77) ended without a '
              'result (killed?) during \'running mariabackup\'"}\n'
              + ROLE.format("Fail the play now that the node is back")
              + 'fatal: [galera-node3 -> localhost]: FAILED! => {"changed": false, "msg": "The backup of galera-node3 '
              'failed at \\"Wait for the backup run\\": the backup runner (pid 77) ended without a result (killed?)."}\n')

# The desync happened, the start did not: the step's failed result says so (desync.changed).
START_FAILED = (ROLE.format(START)
                + 'fatal: [galera-node3]: FAILED! => {"changed": false, "desync": {"changed": true, "desynced": true}, '
                '"msg": "cannot start the backup run on this node: [Errno 28] No space left on device. The node is '
                'desynced: the role resyncs it; nothing was backed up."}\n'
                + ROLE.format("Fail the play now that the node is back")
                + 'fatal: [galera-node3]: FAILED! => {"changed": false, "msg": "The backup of galera-node3 failed: '
                'No space left on device."}\n')


@pytest.mark.parametrize("rc, output, killed, kind, reason", [
    (0, PUBLISHED_RUN, False, "published", ""),
    (2, REFUSED_RUN, False, "refused", "a member is desynced by someone else"),
    (2, LOST_RACE, False, "refused", "the lease is held by another run"),
    (2, FAILED_RUN, False, "failed", "the runner ended without a result"),
    (2, START_FAILED, False, "failed", "the backup directory is full"),
    (-9, FAILED_RUN[:200], True, "killed", "controller killed after the desync"),
    (-9, "PLAY [Back up]\n", True, "killed", "controller killed"),
    (0, ROLE.format("Report the choice") + "ok: [galera-node1]\n", False, "anomaly",
     "the play succeeded without publishing a backup"),
])
def test_a_runs_outcome_is_read_from_its_output(rc, output, killed, kind, reason):
    out = judge.outcome(rc, output, killed)
    assert (out["kind"], out["reason"]) == (kind, reason), out


def test_the_published_id_start_and_final_message_are_read():
    out = judge.outcome(0, PUBLISHED_RUN, False)
    assert out["published"] == "dbtools_galera-node2_20261202T022026Z-7e51cc73"
    assert out["started"] == ["galera-node2"] and out["desynced"]
    failed = judge.outcome(2, FAILED_RUN, False)
    assert failed["message"].startswith("The backup of galera-node3 failed at") and failed["published"] is None
    assert judge.failures(FAILED_RUN)[-1][1] == "galera-node3 -> localhost"


# ---------------------------------------------------------------------------------------------
# What the soak reads on a node (node_inspect.py runs inside the node; here on a directory of the test)

def _backup(top, files: dict, result: str = "ok") -> str:
    path = top / "c_galera-node2_20261202T022026Z-7e51cc73"
    path.mkdir()
    lines = []
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {rel}\n")
    (path / "SHA256SUMS").write_text("".join(lines))
    manifest = dict(id=path.name, method="mariabackup", result=result, verify=dict(level="checksum", result="ok"),
                    sha256=hashlib.sha256("".join(lines).encode()).hexdigest())
    (path / "manifest.json").write_text(json.dumps(manifest))
    return str(path)


def test_an_intact_backup_verifies_and_every_kind_of_damage_is_named(tmp_path):
    path = _backup(tmp_path, {"backup.xb.zst": b"x" * 1000, "sub/extra.sql": b"select 1;"})
    manifest = json.loads((tmp_path / os.path.basename(path) / "manifest.json").read_text())
    assert node_inspect.check_backup(path, manifest) == []
    with open(os.path.join(path, "backup.xb.zst"), "ab") as handle:
        handle.write(b"!")
    os.unlink(os.path.join(path, "sub", "extra.sql"))
    with open(os.path.join(path, "stray"), "w", encoding="utf-8") as handle:
        handle.write("?")
    assert node_inspect.check_backup(path, manifest) == [
        "sub/extra.sql is listed but missing", "stray is not listed in SHA256SUMS", "backup.xb.zst does not match its checksum"]
    assert node_inspect.check_backup(path, dict(manifest, sha256="0" * 64, result="failed"))[0] == \
        "SHA256SUMS does not match the manifest's sha256"


def test_the_listing_tells_complete_backups_from_partials_and_failure_records(tmp_path):
    _backup(tmp_path, {"dump.sql.zst": b"data"})
    (tmp_path / "c_galera-node2_20261202T030000Z-0badf00d.partial").mkdir()
    (tmp_path / "c_galera-node2_20261202T030000Z-0badf00d.failed.json").write_text(json.dumps(dict(error="boom")))
    seen = node_inspect.backups(str(tmp_path), True)
    assert list(seen["backups"]) == ["c_galera-node2_20261202T022026Z-7e51cc73"]
    assert seen["backups"]["c_galera-node2_20261202T022026Z-7e51cc73"]["problems"] == []
    assert [p["name"] for p in seen["partials"]] == ["c_galera-node2_20261202T030000Z-0badf00d.partial"]
    assert seen["failed"][0]["error"] == "boom"


def test_the_secret_scan_finds_a_secret_in_any_file_and_names_which(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clean.log").write_text("nothing here")
    (tmp_path / "a" / "leak.log").write_text("password=Pw-1234 in the middle")
    (tmp_path / "key.bin").write_bytes(b"\0\1k3y-bytes\0")
    hits = node_inspect.scan([str(tmp_path)], dict(password="Pw-1234", key="k3y-bytes"))
    assert sorted(hits) == [[str(tmp_path / "a" / "leak.log"), "password"], [str(tmp_path / "key.bin"), "key"]]


# ---------------------------------------------------------------------------------------------
# The report

def test_the_table_and_summary_show_each_cycle_and_count_violations():
    draw = plan.draw("r1", 1, ["network_cut"]).as_dict()
    cycles = [dict(cycle=1, draw=draw, phase_hit="drain", violations=["x"], to_whole_after_fault=12.34,
                   run=dict(kind="failed", reason="the cluster is not whole"),
                   desync=dict(nodes={draw["node"]: dict(desynced_by_us_seconds=20.0, flow_control_sent_while_desynced=3)}))]
    table = report.markdown(cycles)
    row = table.splitlines()[2]
    assert row.startswith("| 1 | ") and "network cut" in row and "failed: the cluster is not whole" in row
    assert f"{draw['phase']} -> drain" in row or draw["phase"] == "drain"
    assert "| 20.0 | 3 | 12.3 | 1 |" in row
    summary = report.summary(cycles, [dict(cycle=1, text="x")])
    assert summary["violations"] == 1 and summary["outcomes"] == {"failed": 1}
    assert summary["longest_to_synced_after_fault_seconds"] == 12.3


def test_a_reconnected_node_names_itself_once_in_its_hosts_file(tmp_path):
    # docker network connect appends the node's line again; rsync's SST joiner then fails to bind the duplicate.
    import faults  # pylint: disable=import-outside-toplevel
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n172.21.0.4\tgalera-node3\n"
                     "172.21.0.9\tgalera-node3x\n172.21.0.4\tgalera-node3\n")
    done = subprocess.run([sys.executable, "-c", faults.HOSTS_FIX, str(hosts), "galera-node3", "172.21.0.7"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "2 line(s) naming galera-node3 -> 1"
    assert hosts.read_text() == ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n172.21.0.9\tgalera-node3x\n"
                                 "172.21.0.7\tgalera-node3\n")
