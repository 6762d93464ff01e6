# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node-side steps around a run, on real temporary directories: wait, finish, sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _backup_job, _manifest, _proc
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

UID, GID = os.getuid(), os.getgid()
OWNER = __import__("pwd").getpwuid(UID).pw_name
GROUP = __import__("grp").getgrgid(GID).gr_name


@pytest.fixture
def run(tmp_path, monkeypatch):
    base = str(tmp_path / "run")
    os.makedirs(base)
    monkeypatch.setattr(_backup_job, "RUN_BASE", base)
    directory = str(tmp_path / "backups")
    os.makedirs(directory, mode=0o700)
    run_id = "0123abcd"
    backup = f"c1_n1_20261201T000000Z-{run_id}"
    paths = _backup_job.run_paths(directory, backup, run_id, base, str(tmp_path / "verify"))
    value = dict(paths, run_base=base, tool="mariabackup", physical=True, type="full", parent=None, chain=[],
                 cluster=dict(name="c1", state_uuid="u1", size=3), node=dict(name="n1", wsrep_node_name="n1"),
                 server=dict(flavor="mariadb", version="10.11", provider_version="26.4"), owner="o",
                 host="h", started_at="2026-12-01T00:00:00Z", started_epoch=time.time())
    os.makedirs(value["run_dir"], mode=0o700)
    return value


SETTINGS = dict(dir=None, retention=3, lease_ttl=300, file_owner=OWNER, file_group=GROUP, verify="checksum",
                compress="zstd", throttle=0, nice=10, ionice_class="none", ionice_level=7, metrics_dir="")


def state(run, **fields):
    data = dict(run_id=run["run_id"], id=run["id"], step="starting", done=False, result=None,
                process=_proc.identity())
    data.update(fields)
    _manifest.write_json_atomic(run["state_file"], data)


def params(run, **extra):
    return dict(dict(run=run, backup=dict(SETTINGS, dir=run["dir"]), timeout=0.3), **extra)


def test_wait_before_the_run_reports_is_running_not_done(run):
    # The run directory exists, the state file not yet: the run is starting. (Review item 4: a poll made
    # before the job wrote its pid must not end the wait.)
    out = _backup_job.wait(params(run))
    assert out["running"] is True and out["done"] is False


def test_wait_fails_with_the_runs_error(run):
    state(run, done=True, result="failed", error="running mariabackup: disk full", step="running mariabackup")
    with pytest.raises(GaleraError, match="disk full"):
        _backup_job.wait(params(run))


def test_wait_fails_when_the_run_died_without_a_result(run):
    dead = dict(pid=999999, boot_id=_proc.boot_id(), start_ticks=1)
    state(run, process=dead, step="running mariabackup")
    with pytest.raises(GaleraError, match="ended without a result"):
        _backup_job.wait(params(run))


def test_wait_without_a_run_directory_fails(run):
    os.rmdir(run["run_dir"])
    with pytest.raises(GaleraError, match="never started on this node"):
        _backup_job.wait(params(run))


def test_checked_run_rederives_every_path(run):
    forged = dict(run, partial="/var/lib/mysql", run_dir="/", state_file="/etc/shadow")
    checked = _backup_job.checked_run(forged)
    assert checked["partial"] == run["partial"] and checked["run_dir"] == run["run_dir"]
    with pytest.raises(GaleraError, match="not a run of step=preflight"):
        _backup_job.checked_run(dict(run, id="c1_n1_20261201T000000Z-ffffffff"))
    with pytest.raises(GaleraError):
        _backup_job.checked_run(dict(run, dir="/"))


def make_partial(run, ours=True):
    os.makedirs(run["partial"], mode=0o700)
    with open(os.path.join(run["partial"], "backup.xbstream.zst"), "wb") as handle:
        handle.write(b"data")
    record = _manifest.run_record(run["run_id"] if ours else "ffffffff", run["id"], "c1", "u1", "o", "h",
                                  _proc.identity(), "2026-12-01T00:00:00Z")
    _manifest.write_json_atomic(os.path.join(run["partial"], _manifest.RUN_RECORD), record)


OUT = dict(tool="mariabackup", tables=1, tool_seconds=1.0, galera_info="u1:5 ", to_lsn=9, from_lsn=0,
           checksum=dict(files=1, bytes=4, sha256="a" * 64), verify=dict(level="checksum", result="ok"))


def test_finish_publishes_a_verified_backup_even_when_the_resync_timed_out(run):
    make_partial(run)
    state(run, done=True, result="ok", out=OUT, process=dict(pid=999999, boot_id=_proc.boot_id()))
    resync = dict(failed=True, desynced=False, msg="did not reach Synced within timeout",
                  local_state_comment=dict(before="Donor/Desynced", after="Joined"))
    out = _backup_job.finish(params(run, resync=resync))
    assert out["published"] == run["final"] and os.path.isdir(run["final"])
    manifest = json.load(open(os.path.join(run["final"], "manifest.json"), encoding="utf-8"))
    assert manifest["desync"]["state_after"] == "Joined" and manifest["desync"]["flow_control_sent"] is None
    assert not os.path.exists(os.path.join(run["final"], _manifest.RUN_RECORD))
    assert not os.path.exists(run["run_dir"])


def test_finish_never_replaces_an_existing_backup(run):
    make_partial(run)
    os.makedirs(run["final"])
    state(run, done=True, result="ok", out=OUT, process=dict(pid=999999, boot_id=_proc.boot_id()))
    with pytest.raises(GaleraError, match="stays in"):
        _backup_job.finish(params(run))
    assert os.path.isdir(run["partial"]) and os.listdir(run["final"]) == []


def test_finish_discards_only_its_own_partial_and_records_the_failure(run):
    make_partial(run, ours=False)
    state(run, done=True, result="failed", error="boom", process=dict(pid=999999, boot_id=_proc.boot_id()))
    out = _backup_job.finish(params(run, failure="Wait: boom", failed_step="Wait"))
    assert os.path.isdir(run["partial"]), "another run's partial was deleted"
    assert out["kept_partial"] == run["partial"]
    record = json.load(open(run["failed"], encoding="utf-8"))
    assert record["result"] == "failed" and record["step"] == "Wait" and record["cluster"]["name"] == "c1"


def test_finish_after_a_refused_desync_changes_nothing(run):
    os.rmdir(run["run_dir"])
    out = _backup_job.finish(params(run, failure="refused", desync=dict(changed=False, failed=True)))
    assert out["changed"] is False and out["failure_record"] is None
    assert os.listdir(run["dir"]) == []


RESYNCED = dict(changed=True, desynced=False, drained=True, drain_seconds=0.4, sync_seconds=0.01, flow_control_sent=0,
                max_recv_queue_seen=120, local_state_comment=dict(before="Donor/Desynced", after="Synced"))


def test_finish_resyncs_first_then_publishes_with_the_resyncs_figures(run):
    # With resync_options the resync is this step's, before the publish: nothing is published while the
    # node may still be desynced, and the manifest records the resync this process made.
    make_partial(run)
    state(run, done=True, result="ok", out=OUT, process=dict(pid=999999, boot_id=_proc.boot_id()))
    seen = []

    def resync():
        seen.append(os.path.isdir(run["final"]))
        return dict(RESYNCED)

    out = _backup_job.finish(params(run), resync)
    assert seen == [False], "the backup was published before the resync"
    assert out["published"] == run["final"] and out["resync"]["desynced"] is False
    manifest = json.load(open(os.path.join(run["final"], "manifest.json"), encoding="utf-8"))
    assert manifest["desync"]["resynced"] is True and manifest["desync"]["state_after"] == "Synced"
    assert manifest["desync"]["drain_seconds"] == 0.4 and manifest["desync"]["flow_control_sent"] == 0


def test_finish_stops_a_failed_runner_before_the_resync(run):
    make_partial(run)
    runner = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state(run, done=False, step="running mariabackup", process=_proc.identity(runner.pid))
        alive_at_resync = []

        def resync():
            alive_at_resync.append(runner.poll() is None and _proc.same_process_alive(_proc.identity(runner.pid)))
            return dict(RESYNCED)

        out = _backup_job.finish(params(run, failure="Wait: the lease was lost", failed_step="Wait"), resync)
        runner.wait(timeout=10)
        assert alive_at_resync == [False], "the node was resynced with the backup tool still running"
        assert out["discarded"] == run["partial"] and json.load(open(run["failed"], encoding="utf-8"))["resynced"]
    finally:
        if runner.poll() is None:
            runner.kill()


def test_a_failed_resync_still_publishes_and_then_fails_with_its_error(run):
    make_partial(run)
    state(run, done=True, result="ok", out=OUT, process=dict(pid=999999, boot_id=_proc.boot_id()))

    def resync():
        raise GaleraError("node n1 has wsrep_desync=OFF but did not reach Synced within timeout=300s", changed=True)

    with pytest.raises(GaleraError, match="did not reach Synced") as caught:
        _backup_job.finish(params(run), resync)
    assert "published as " + run["final"] in caught.value.msg
    assert caught.value.get("published") == run["final"] and caught.value.get("resync")["failed"] is True
    manifest = json.load(open(os.path.join(run["final"], "manifest.json"), encoding="utf-8"))
    assert manifest["desync"]["resynced"] is False
    assert not os.path.exists(run["run_dir"])


def test_a_publish_that_fails_after_the_resync_says_the_node_was_resynced(run):
    make_partial(run)
    os.makedirs(run["final"])
    state(run, done=True, result="ok", out=OUT, process=dict(pid=999999, boot_id=_proc.boot_id()))
    with pytest.raises(GaleraError, match="stays in") as caught:
        _backup_job.finish(params(run), lambda: dict(RESYNCED))
    assert caught.value.get("resync")["desynced"] is False


def test_lower_priority_only_lowers_and_children_inherit_it():
    # The pre-flight and finish steps yield the CPU to the server (galera_backup_nice); run in a child so the
    # test process keeps its priority.
    code = ("import os, subprocess, sys; sys.path[:0] = sys.argv[1:]; "
            "from ansible_collections.dbtools.galera.plugins.module_utils import _proc; "
            "before = os.getpriority(os.PRIO_PROCESS, 0); _proc.lower_priority(0); _proc.lower_priority(-5); "
            "same = os.getpriority(os.PRIO_PROCESS, 0); _proc.lower_priority(3); "
            "child = subprocess.run(['sh', '-c', 'cut -d\" \" -f19 /proc/self/stat'], capture_output=True, text=True).stdout; "
            "print(before, same, os.getpriority(os.PRIO_PROCESS, 0), child.strip())")
    out = subprocess.run([sys.executable, "-c", code, *sys.path], capture_output=True, text=True, check=True).stdout.split()
    before, same, after, child = (int(x) for x in out)
    assert same == before and after == min(before + 3, 19) and child == after


# ---------------------------------------------------------------------------------------------
# start with the desync (the role's one call): the desync comes after the step's checks and before
# anything is created; a failure after it carries its result, so the caller resyncs.

DESYNCED = dict(changed=True, desynced=True, watchdog=dict(state_file="/run/watchdog/state.json"))


class FakeRunner:
    made = []

    def __init__(self, run, s, login, key, key_file, cnf, watchdog_state):
        self.run, self.watchdog_state = run, watchdog_state
        FakeRunner.made.append(self)

    def main(self):  # never called: spawn_detached is replaced too
        raise AssertionError


@pytest.fixture
def startable(run, monkeypatch):
    os.rmdir(run["run_dir"])  # start creates it
    FakeRunner.made = []
    monkeypatch.setattr(_backup_job._backup_runner, "Runner", FakeRunner)

    def spawn(child, setup=None):
        setup()
        state(run, process=_proc.identity())
        return 4242

    monkeypatch.setattr(_backup_job._proc, "spawn_detached", spawn)
    return run


def test_start_desyncs_after_its_checks_and_before_creating_anything(startable):
    seen = []

    def desync(pid_file):
        seen.append((pid_file, os.path.exists(startable["run_dir"]), os.path.exists(startable["partial"])))
        return dict(DESYNCED)

    out = _backup_job.start(params(startable), desync)
    assert seen == [(startable["pid_file"], False, False)]
    assert out["desync"] == DESYNCED and out["pid"] == 4242 and os.path.isdir(startable["partial"])
    assert FakeRunner.made[0].watchdog_state == "/run/watchdog/state.json"


def test_start_refused_by_its_checks_never_desyncs(startable):
    os.chmod(startable["dir"], 0o777)  # world-writable: refused

    def desync(pid_file):
        raise AssertionError("desynced although the step refused")

    with pytest.raises(GaleraError, match="writable"):
        _backup_job.start(params(startable), desync)


def test_a_refused_desync_creates_nothing(startable):
    def desync(pid_file):
        raise GaleraError("another desync holds the cluster-wide lease. Nothing was changed.")

    with pytest.raises(GaleraError, match="another desync") as raised:
        _backup_job.start(params(startable), desync)
    assert "desync" not in raised.value.details
    assert not os.path.exists(startable["run_dir"]) and not os.path.exists(startable["partial"])


@pytest.mark.parametrize("where", ["option file", "spawn"])
def test_a_start_that_fails_after_the_desync_says_the_node_is_desynced(startable, monkeypatch, where):
    if where == "option file":
        def full(path, text):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(_backup_job._tools, "write_private", full)
    else:
        def no_fork(child, setup=None):
            raise OSError(11, "Resource temporarily unavailable")
        monkeypatch.setattr(_backup_job._proc, "spawn_detached", no_fork)
    with pytest.raises(GaleraError, match="cannot start the backup run") as raised:
        _backup_job.start(params(startable), lambda pid_file: dict(DESYNCED))
    assert raised.value.details["desync"] == DESYNCED
    assert not os.path.exists(startable["run_dir"]) and not os.path.exists(startable["partial"])
