# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node-side restore steps (_restore_job) on real directories: nothing is ever deleted but our own,
the data directory moves aside only once the restored one is ready, a failed stage leaves it untouched."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _grastate, _restore, _restore_job, _tools
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

UUID = "e07c0760-edf2-11f1-8b56-a238644635d2"
BACKUP = "dbtools_galera-node3_20261201T030000Z-1a2b3c4d"


class Runner:
    """An AnsibleModule stand-in: records the commands it runs."""

    def __init__(self, rc=0):
        self.rc, self.calls = rc, []

    def run_command(self, argv, **kwargs):
        self.calls.append(list(argv))
        return self.rc, "", "" if self.rc == 0 else "failed"

    def get_bin_path(self, name):
        return None


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A node whose configured data directory is <tmp>/lib/mysql, holding data; its server is stopped."""
    datadir = tmp_path / "lib" / "mysql"
    datadir.mkdir(parents=True)
    (datadir / "ibdata1").write_bytes(b"old data")
    (datadir / "grastate.dat").write_text("uuid: x\nseqno: -1\n")
    monkeypatch.setattr(_restore_job, "read_defaults", lambda runner, defaults_file: {"datadir": str(datadir)})
    state = dict(running=False)
    monkeypatch.setattr(_restore_job, "server_state", lambda params, config: dict(
        reachable=state["running"], process_alive=state["running"], local_state_comment="Synced"))
    monkeypatch.setattr(_restore_job, "process_alive", lambda pid_file: False)
    return dict(datadir=datadir, state=state, tmp=tmp_path)


def write_backup(directory, backup_id=BACKUP, payload=b"stream", method="mariabackup", seqno=5):
    path = directory / backup_id
    path.mkdir(parents=True)
    (path / "backup.xbstream").write_bytes(payload)
    (path / "tables.json").write_text(json.dumps([["sbtest", "sbtest1", 100]]))
    sums = "".join(f"{hashlib.sha256((path / name).read_bytes()).hexdigest()}  ./{name}\n"
                   for name in ("backup.xbstream", "tables.json"))
    (path / "SHA256SUMS").write_text(sums)
    manifest = dict(format=1, id=backup_id, result="ok", type="full", method=method, chain=[backup_id],
                    cluster=dict(name="dbtools", state_uuid=UUID), finished_at="2026-12-01T03:01:00Z", bytes=100,
                    sha256=hashlib.sha256(sums.encode()).hexdigest(),
                    position=dict(cluster_uuid=UUID, seqno=seqno), verify=dict(level="restore", checksums={}))
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------------------------------------
# swap

def test_swap_moves_the_data_directory_aside_and_puts_the_staged_one_in_its_place(node):
    datadir = node["datadir"]
    staging = datadir.parent / "mysql.dbtools-restore-0a1b2c3d"
    staging.mkdir()
    (staging / "ibdata1").write_bytes(b"restored")
    (datadir.parent / "mysql.dbtools-restore-0a1b2c3d.run.json").write_text("{}")
    result = _restore_job.swap(Runner(), dict(run_id="0a1b2c3d"), check_mode=False)
    aside = result["aside"]
    assert os.path.basename(aside).startswith("mysql.dbtools-2") and os.path.dirname(aside) == str(datadir.parent)
    assert (datadir / "ibdata1").read_bytes() == b"restored"
    assert open(os.path.join(aside, "ibdata1"), "rb").read() == b"old data"
    assert not staging.exists() and not (datadir.parent / "mysql.dbtools-restore-0a1b2c3d.run.json").exists()
    assert f"moved {datadir} aside to {aside}" in result["msg"]


def test_swap_for_a_full_sst_leaves_an_empty_data_directory_and_keeps_the_old_one(node):
    datadir = node["datadir"]
    result = _restore_job.swap(Runner(), {}, check_mode=False)
    assert list(datadir.iterdir()) == []
    assert sorted(os.listdir(result["aside"])) == ["grastate.dat", "ibdata1"]
    assert "takes a full SST" in result["msg"]


def test_swap_in_check_mode_and_refusals_change_nothing(node):
    datadir = node["datadir"]
    before = tree(node["tmp"])
    result = _restore_job.swap(Runner(), {}, check_mode=True)
    assert "would move" in result["msg"] and tree(node["tmp"]) == before
    with pytest.raises(GaleraError, match="is missing: stage the backup first. Nothing was changed"):
        _restore_job.swap(Runner(), dict(run_id="0a1b2c3d"), check_mode=False)
    node["state"]["running"] = True
    runner = Runner()
    with pytest.raises(GaleraError, match="without a confirmed disaster restore. Nothing was changed"):
        _restore_job.swap(runner, {}, check_mode=False)
    assert runner.calls == [] and tree(node["tmp"]) == before
    assert (datadir / "ibdata1").read_bytes() == b"old data"


def test_a_confirmed_disaster_restore_stops_the_server_with_the_given_command(node, monkeypatch):
    node["state"]["running"] = True
    runner = Runner()
    # The stop command stops it: the second look finds it stopped.
    calls = []

    def state(params, config):
        calls.append(1)
        return dict(reachable=len(calls) == 1, process_alive=len(calls) == 1, local_state_comment="Synced")
    monkeypatch.setattr(_restore_job, "server_state", state)
    result = _restore_job.swap(runner, dict(stop=True, stop_command=["/usr/local/bin/db", "stop", "--now"]),
                               check_mode=False)
    assert runner.calls == [["/usr/local/bin/db", "stop", "--now"]]
    assert result["stopped"] and result["aside"]


def test_start_runs_the_given_command_refuses_a_running_server_and_only_says_so_in_check_mode(node):
    params = dict(action="start", start_command=["/usr/local/bin/db", "start"])
    runner = Runner()
    assert _restore_job.start(runner, params, check_mode=True)["msg"] == "would run /usr/local/bin/db start"
    assert runner.calls == []
    result = _restore_job.start(runner, params, check_mode=False)
    assert runner.calls == [["/usr/local/bin/db", "start"]] and result["seconds"] >= 0
    node["state"]["running"] = True
    runner = Runner()
    with pytest.raises(GaleraError, match="already runs .*Nothing was changed"):
        _restore_job.start(runner, params, check_mode=False)
    # A check-mode disaster restore did not stop the server in its swap: the start says what it would do.
    assert _restore_job.start(runner, params, check_mode=True)["msg"].endswith("once its running server is stopped")
    assert runner.calls == []


def test_a_mount_point_is_refused(node, monkeypatch):
    monkeypatch.setattr(os.path, "ismount", lambda path: path == str(node["datadir"]))
    with pytest.raises(GaleraError, match="mount point"):
        _restore_job.swap(Runner(), {}, check_mode=False)


@pytest.mark.parametrize("datadir", ["/", "/etc", "/usr/lib/mysql", "relative", "/var/lib/../../etc", "/a\nb"])
def test_hostile_data_directories_are_refused_before_anything(datadir, monkeypatch):
    monkeypatch.setattr(_restore_job, "read_defaults", lambda runner, defaults_file: {})
    with pytest.raises(GaleraError, match="Nothing was changed"):
        _restore_job.node_config(Runner(), dict(datadir=datadir))


# ---------------------------------------------------------------------------------------------
# stage (the worker run in this process)

@pytest.fixture
def inline_worker(monkeypatch):
    def spawn(run_id, kind, work, key, key_file):
        directory = _restore_job.run_dir(run_id)
        os.makedirs(directory, mode=0o700)
        _restore_job.Worker(run_id, kind, lambda w: work(w, key_file)).main()
        return dict(pid=os.getpid(), run_id=run_id, state_dir=directory)
    monkeypatch.setattr(_restore_job, "spawn", spawn)
    monkeypatch.setattr(_restore_job, "run_base", lambda: str(monkeypatch.tmp_base))
    monkeypatch.setattr(_tools, "missing", lambda tools: [])
    monkeypatch.setattr(_restore_job, "server_owner", lambda datadir: ("root", os.getuid(), os.getgid(), 0o750))


@pytest.fixture(autouse=True)
def run_base(tmp_path, monkeypatch):
    monkeypatch.tmp_base = tmp_path / "run"
    monkeypatch.setattr(_restore_job, "run_base", lambda: str(tmp_path / "run"))


def test_stage_prepares_beside_the_data_directory_and_writes_grastate(node, inline_worker, monkeypatch):
    backups = node["tmp"] / "backups"
    write_backup(backups)

    def prepare(tool, members, target, scratch, key_file, log, progress=None, records=None):
        progress("preparing")
        with open(os.path.join(target, "ibdata1"), "wb") as handle:
            handle.write(b"restored")
        return len(members)
    monkeypatch.setattr(_restore, "prepare_chain", prepare)
    params = dict(id=BACKUP, dir=str(backups), grastate="bootstrap", work_dir=str(node["tmp"] / "work"))
    started = _restore_job.stage(Runner(), params, check_mode=False)
    done = _restore_job.wait(dict(run_id=started["run_id"], timeout=1))
    assert done["done"], done
    out = done["out"]
    staging = out["staging"]
    assert staging == f"{node['datadir']}.dbtools-restore-{started['run_id']}"
    assert _grastate.read(staging) == dict(uuid=UUID, seqno=5, safe_to_bootstrap=1)
    assert out["tables"] == [["sbtest", "sbtest1", 100]] and out["fetched"] == []
    assert (node["datadir"] / "ibdata1").read_bytes() == b"old data"  # the data directory is not touched
    assert set(done["progress"]["phases"]) == {"fetch", "integrity", "prepare"}


def test_a_failed_prepare_removes_its_staging_and_leaves_the_data_directory(node, inline_worker, monkeypatch):
    backups = node["tmp"] / "backups"
    write_backup(backups)

    def prepare(tool, members, target, scratch, key_file, log, progress=None, records=None):
        with open(os.path.join(target, "partial"), "wb") as handle:
            handle.write(b"half")
        raise GaleraError("mariabackup --prepare of x: mariabackup exited with 1: [ERROR] InnoDB: corrupt page")
    monkeypatch.setattr(_restore, "prepare_chain", prepare)
    before = tree(node["datadir"])
    started = _restore_job.stage(Runner(), dict(id=BACKUP, dir=str(backups), grastate="joiner",
                                                work_dir=str(node["tmp"] / "work")), check_mode=False)
    with pytest.raises(GaleraError, match="corrupt page"):
        _restore_job.wait(dict(run_id=started["run_id"], timeout=1))
    assert not os.path.exists(started["staging"]) and not os.path.exists(started["staging"] + ".run.json")
    assert tree(node["datadir"]) == before


def test_a_damaged_local_backup_is_refused_before_anything_is_prepared(node, inline_worker, monkeypatch):
    backups = node["tmp"] / "backups"
    path = write_backup(backups)
    (path / "backup.xbstream").write_bytes(b"changed")
    monkeypatch.setattr(_restore, "prepare_chain", lambda *a, **k: pytest.fail("prepared a damaged backup"))
    started = _restore_job.stage(Runner(), dict(id=BACKUP, dir=str(backups), grastate="joiner",
                                                work_dir=str(node["tmp"] / "work")), check_mode=False)
    with pytest.raises(GaleraError, match="does not match its SHA256SUMS"):
        _restore_job.wait(dict(run_id=started["run_id"], timeout=1))
    assert not os.path.exists(started["staging"])


def test_check_refuses_a_missing_chain_member_and_a_logical_dump(node):
    backups = node["tmp"] / "backups"
    path = write_backup(backups, "dbtools_galera-node3_20261202T030000Z-2b3c4d5e")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(type="incremental", parent=BACKUP, chain=[BACKUP, manifest["id"]])
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GaleraError, match=f"{BACKUP}, the parent of .* is missing.*Nothing was changed"):
        _restore_job.check(Runner(), dict(id=manifest["id"], dir=str(backups)))
    write_backup(backups, "dbtools_galera-node3_20261203T030000Z-3c4d5e6f", method="mysqldump")
    with pytest.raises(GaleraError, match="logical mysqldump dump.*restore_logical"):
        _restore_job.check(Runner(), dict(id="dbtools_galera-node3_20261203T030000Z-3c4d5e6f", dir=str(backups)))


# ---------------------------------------------------------------------------------------------
# cleanup, the worker, wait

def test_cleanup_removes_only_the_backups_this_run_fetched(tmp_path):
    work = tmp_path / "work"
    write_backup(work)
    write_backup(work, "dbtools_galera-node3_20261202T030000Z-2b3c4d5e")
    (work / "notes").mkdir()
    result = _restore_job.cleanup(dict(work_dir=str(work), fetched=[BACKUP]), check_mode=False)
    assert result["removed"] == [str(work / BACKUP)]
    assert sorted(os.listdir(work)) == ["dbtools_galera-node3_20261202T030000Z-2b3c4d5e", "notes"]
    for hostile in ("../work", "notes", "/etc", "dbtools_x_20261201T030000Z-1a2b3c4d/../../x"):
        with pytest.raises(GaleraError, match="not a backup id"):
            _restore_job.cleanup(dict(work_dir=str(work), fetched=[hostile]), check_mode=False)
    assert sorted(os.listdir(work)) == ["dbtools_galera-node3_20261202T030000Z-2b3c4d5e", "notes"]


def test_a_detached_worker_reports_its_progress_and_result():
    def work(worker, key_file):
        worker.step("fetching", phase="fetch")
        worker.step("preparing", phase="prepare")
        return dict(answer=42)
    started = _restore_job.spawn("0a1b2c3d", "test", work, None, None)
    result = None
    for _attempt in range(40):
        result = _restore_job.wait(dict(run_id="0a1b2c3d", timeout=0.5))
        if result["done"]:
            break
    assert result["done"] and result["out"] == dict(answer=42)
    assert set(result["progress"]["phases"]) == {"fetch", "prepare"}
    assert not os.path.exists(started["state_dir"])


def test_wait_for_a_run_that_never_started_says_so():
    with pytest.raises(GaleraError, match="was never started on this node"):
        _restore_job.wait(dict(run_id="deadbeef", timeout=0.1))
    with pytest.raises(GaleraError, match="not a restore run id"):
        _restore_job.wait(dict(run_id="../../etc", timeout=0.1))


def test_a_failed_drill_record_carries_the_last_good_one(tmp_path):
    path = tmp_path / "drill-dbtools.json"
    good = dict(kind="dbtools.galera restore drill", result="ok", finished_at="2026-12-01T00:00:00Z", cluster="dbtools")
    path.write_text(json.dumps(good))
    assert _restore_job.previous_ok(str(path)) == good
    path.write_text(json.dumps(dict(good, result="failed", last_ok=good)))
    assert _restore_job.previous_ok(str(path)) == good
    path.write_text("garbage")
    assert _restore_job.previous_ok(str(path)) is None
