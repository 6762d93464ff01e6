# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The recovery rules (_recovery, _grastate, _service): plans, refusals, IST feasibility, how a node
joined (from real MariaDB 10.11 logs), verification verdicts, names, settings."""

from __future__ import annotations

import json

import os
from datetime import datetime, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _grastate, _recovery, _service
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

UUID = "e07c0760-edf2-11f1-8b56-a238644635d2"
OTHER_UUID = "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"
BACKUP = "dbtools_galera-node3_20261201T030000Z-1a2b3c4d"
HOSTS = ["galera-node1", "galera-node2", "galera-node3"]

# Real excerpts of a joiner's error log (MariaDB 10.11.19, Galera 4.23, rsync SST), restored at uuid:5.
IST_LOG = f"""\
2026-12-02  1:52:12 0 [Note] Starting MariaDB 10.11.19-MariaDB-0+deb12u1 source revision 5843d847 server_uid x= as process 382
2026-12-02  1:52:13 0 [Note] WSREP: Found saved state: {UUID}:5, safe_to_bootstrap: 0
2026-12-02  1:52:14 2 [Note] WSREP: State transfer required:
2026-12-02  1:52:19 2 [Note] WSREP: Prepared IST receiver for 6-8, listening at: tcp://172.30.0.3:4568
2026-12-02  1:52:19 0 [Note] WSREP: Member 1.0 (recov-exp2) requested state transfer from '*any*'. Selected 0.0 (recov-exp1)(SYNCED) as donor.
WSREP_SST: [INFO] rsync IST completed on joiner (20261202 01:52:24.477)
2026-12-02  1:52:25 3 [Note] WSREP: SST received
2026-12-02  1:52:25 3 [Note] WSREP: SST received: {UUID}:5
2026-12-02  1:52:25 2 [Note] WSREP: Receiving IST: 3 writesets, seqnos 6-8
2026-12-02  1:52:25 2 [Note] WSREP: IST received: {UUID}:8
2026-12-02  1:52:25 2 [Note] WSREP: Synchronized with group, ready for connections
"""
SST_LOG = f"""\
2026-12-02  1:52:35 0 [Note] Starting MariaDB 10.11.19-MariaDB-0+deb12u1 source revision 5843d847 server_uid x= as process 686
2026-12-02  1:52:35 0 [Note] WSREP: Found saved state: 00000000-0000-0000-0000-000000000000:-1, safe_to_bootstrap: 1
2026-12-02  1:52:37 2 [Note] WSREP: State transfer required:
2026-12-02  1:52:39 2 [Note] WSREP: Prepared IST receiver for 0-10, listening at: tcp://172.30.0.3:4568
2026-12-02  1:52:39 0 [Note] WSREP: Member 0.0 (recov-exp2) requested state transfer from '*any*'. Selected 1.0 (recov-exp1)(SYNCED) as donor.
WSREP_SST: [INFO] rsync SST completed on joiner (20261202 01:52:47.786)
2026-12-02  1:52:49 3 [Note] WSREP: SST received
2026-12-02  1:52:50 3 [Note] WSREP: SST received: {UUID}:10
2026-12-02  1:52:50 0 [Note] WSREP: Receiving IST... 100.0% (4/4 events) complete.
2026-12-02  1:52:50 2 [Note] WSREP: IST received: {UUID}:10
"""


def summary(backup_id=BACKUP, cluster="dbtools", seqno=5, uuid=UUID, method="mariabackup", restorable=True,
            finished="2026-12-01T03:01:00Z", broken=None):
    return dict(id=backup_id, cluster=cluster, method=method, restorable=restorable, broken=broken,
                finished_at=finished, chain=[backup_id], position=dict(cluster_uuid=uuid, seqno=seqno))


def fact(running=False, primary=False, state=None, backups=(), cluster="dbtools", cached=None, last=None,
         uuid=UUID, process=None):
    server = dict(reachable=running, process_alive=running if process is None else process)
    if running:
        server.update(cluster_status="Primary" if primary else "non-Primary", local_state=state,
                      local_state_comment={4: "Synced", 1: "Joining"}.get(state, "?"), cluster_size=3,
                      cluster_state_uuid=uuid, cached_downto=cached, last_committed=last, gcache_size=256 << 20)
    return dict(config=dict(cluster_name=cluster, datadir="/var/lib/mysql"), server=server,
                source=dict(backups=list(backups)))


def settings(**kw):
    base = dict(source="local", dir="/var/backups/galera", joiners="ist", id="", cluster="", confirm="",
                first_node="")
    base.update(kw)
    return base


# ---------------------------------------------------------------------------------------------
# grastate.dat

def test_grastate_round_trip_and_bootstrap_flag():
    text = _grastate.render(UUID, 42, True)
    assert text.splitlines()[0] == "# GALERA saved state"
    assert _grastate.parse(text) == dict(uuid=UUID, seqno=42, safe_to_bootstrap=1)
    assert _grastate.parse(_grastate.render(UUID, 42, False))["safe_to_bootstrap"] == 0


@pytest.mark.parametrize("uuid, seqno", [
    (None, 5), ("", 5), ("00000000-0000-0000-0000-000000000000", 5), ("not-a-uuid", 5),
    (UUID + "\nsafe_to_bootstrap: 1", 5), (UUID, -1), (UUID, None), (UUID, "5"), (UUID, True),
])
def test_grastate_refuses_positions_that_are_not(uuid, seqno):
    with pytest.raises(GaleraError, match="Nothing was changed"):
        _grastate.render(uuid, seqno, True)


def test_grastate_write_replaces_the_file_and_drops_the_old_view(tmp_path):
    (tmp_path / "grastate.dat").write_text("# old\nuuid: x\nseqno: -1\n")
    (tmp_path / "gvwstate.dat").write_text("my_uuid: x\n")
    _grastate.write(str(tmp_path), UUID, 7, False)
    assert _grastate.read(str(tmp_path)) == dict(uuid=UUID, seqno=7, safe_to_bootstrap=0)
    assert not (tmp_path / "gvwstate.dat").exists()
    assert oct(os.stat(tmp_path / "grastate.dat").st_mode & 0o777) == "0o660"
    assert [p.name for p in tmp_path.iterdir()] == ["grastate.dat"]


# ---------------------------------------------------------------------------------------------
# The service seam

def test_systemd_defaults_and_given_commands_win():
    cmds = _service.commands({}, systemd=True)
    assert cmds == dict(start=["systemctl", "start", "mariadb"], bootstrap=["galera_new_cluster"],
                        stop=["systemctl", "stop", "mariadb"])
    cmds = _service.commands(dict(start=["galera-node", "start"], bootstrap=["galera-node", "start", "--new-cluster"]),
                             systemd=True, unit="mariadb@db2")
    assert cmds["start"] == ["galera-node", "start"] and cmds["stop"] == ["systemctl", "stop", "mariadb@db2"]


def test_galera_new_cluster_is_the_default_bootstrap_of_mariadb_service_only():
    # It restarts mariadb.service with --wsrep-new-cluster: for an instance unit it would restart another server.
    assert _service.commands({}, systemd=True, unit="mariadb.service")["bootstrap"] == ["galera_new_cluster"]
    cmds = _service.commands({}, systemd=True, unit="mariadb@db2")
    assert cmds["bootstrap"] is None and cmds["start"] == ["systemctl", "start", "mariadb@db2"]
    with pytest.raises(GaleraError, match=r"galera_restore_service is 'mariadb@db2' and galera_restore_bootstrap_command "
                                          r"is not set: galera_new_cluster bootstraps only MariaDB's mariadb.service"):
        _service.require(cmds, "bootstrap", systemd=True, unit="mariadb@db2")


def executable(path):
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def test_the_report_names_each_command_and_why_it_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_service, "SEARCH", ())
    start = executable(tmp_path / "db-start")
    executable(tmp_path / "systemctl")
    hostile = f"/nonexistent/$(touch {tmp_path}/pwned)`id`"
    report = _service.report(dict(start=[start, "node2"], stop=[hostile]), systemd=False)
    assert report["start"] == dict(argv=[start, "node2"], problem=None)
    assert report["stop"]["problem"].startswith(f"{hostile} (galera_restore_stop_command) is not an executable "
                                                "program on this host")
    assert "this host has no systemd and galera_restore_bootstrap_command is not set" in report["bootstrap"]["problem"]
    assert not (tmp_path / "pwned").exists()
    # With systemd: the defaults, their programs looked up (galera_new_cluster is not installed here).
    report = _service.report({}, systemd=True)
    assert report["start"] == dict(argv=["systemctl", "start", "mariadb"], problem=None)
    assert report["bootstrap"]["problem"] == ("galera_new_cluster (galera_restore_bootstrap_command, the default) is not "
                                              "an executable program on this host (PATH and the sbin directories): "
                                              "install it or set galera_restore_bootstrap_command")
    # A wrong unit name is every action's problem, not an exception: the plan refuses with it.
    report = _service.report({}, systemd=True, unit="../x")
    assert all("is not a systemd unit name" in r["problem"] for r in report.values())


def test_without_systemd_a_missing_command_names_its_variable():
    cmds = _service.commands(dict(start=["/opt/db/start"]), systemd=False)
    assert _service.require(cmds, "start") == ["/opt/db/start"]
    with pytest.raises(GaleraError, match="galera_restore_bootstrap_command is not set"):
        _service.require(cmds, "bootstrap")


@pytest.mark.parametrize("value", ["systemctl start mariadb", ["", "x"], ["a\nb"], [1, 2], {"a": 1}])
def test_commands_are_argv_lists_only(value):
    with pytest.raises(GaleraError, match="argv|control character|list of strings"):
        _service.commands(dict(start=value), systemd=True)


@pytest.mark.parametrize("unit", ["-x", "a/b", "m\ndb"])
def test_unit_names_are_checked(unit):
    with pytest.raises(GaleraError, match="unit name"):
        _service.commands({}, systemd=True, unit=unit)


def cgroup_file(tmp_path, pid, text):
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "cgroup").write_text(text)
    return str(tmp_path)


def test_the_service_that_runs_a_process_is_read_from_its_cgroup(tmp_path):
    # cgroup v1 (the name=systemd hierarchy; a container's prefix before it), v2, a login session, none.
    proc = cgroup_file(tmp_path, 11, "12:pids:/docker/ab/system.slice/x.service\n"
                                     "1:name=systemd:/docker/ab/system.slice/mariadb@db2.service\n")
    assert _service.unit_of_pid(11, proc) == "mariadb@db2.service"
    cgroup_file(tmp_path, 12, "0::/system.slice/mariadb.service\n")
    assert _service.unit_of_pid(12, proc) == "mariadb.service"
    cgroup_file(tmp_path, 13, "0::/user.slice/user-0.slice/session-4.scope\n")
    assert _service.unit_of_pid(13, proc) is None
    assert _service.unit_of_pid(14, proc) is None
    assert _service.unit_of_pid(None, proc) is None


def test_systemds_state_of_the_unit_comes_from_systemctl_show(monkeypatch):
    monkeypatch.setattr(_service, "locate", lambda program: "/usr/bin/" + program)
    runner = Runner(out="Id=mariadb.service\nLoadState=loaded\nActiveState=active\nMainPID=42\n")
    assert _service.unit_state(runner, "mysql") == dict(Id="mariadb.service", LoadState="loaded",
                                                        ActiveState="active", MainPID="42")
    assert runner.calls == [["/usr/bin/systemctl", "show", "--property=Id,LoadState,ActiveState,MainPID", "mysql"]]
    # A name systemctl would read as an option is never passed to it.
    assert _service.unit_state(runner, "--all") is None and len(runner.calls) == 1
    assert _service.unit_state(Runner(rc=1), "mariadb") is None


LOADED = dict(Id="mariadb.service", LoadState="loaded", ActiveState="active", MainPID="42")


def test_a_default_command_of_a_unit_that_does_not_run_this_server_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_service, "locate", lambda program: "/usr/bin/" + program)
    serving = dict(pid=42, pid_file="/run/mysqld/mysqld.pid", unit="mariadb.service")
    # The unit runs this server: nothing to say; nor through an alias that resolves to it.
    assert all(r["problem"] is None for r in _service.report({}, True, "mariadb", LOADED, serving).values())
    alias = _service.report({}, True, "mysql", LOADED, serving)
    assert alias["start"]["problem"] is None and alias["stop"]["problem"] is None
    # systemd has no such unit: every default command is refused, naming the variable.
    missing = dict(Id="mariadb-typo.service", LoadState="not-found", ActiveState="inactive", MainPID="0")
    report = _service.report({}, True, "mariadb-typo", missing, dict(pid=None))
    assert report["start"]["problem"].startswith("galera_restore_service='mariadb-typo': systemd has no such unit on "
                                                 "this host (LoadState not-found)")
    assert report["start"]["problem"].endswith("or set galera_restore_start_command")
    assert "galera_restore_stop_command" in report["stop"]["problem"]
    # Another server's unit (several servers per host): stopping it would stop that one, not this.
    other = dict(Id="mariadb@db1.service", LoadState="loaded", ActiveState="active", MainPID="77")
    report = _service.report({}, True, "mariadb@db1", other, dict(serving, unit="mariadb@db2.service"))
    assert report["stop"]["problem"] == (
        "galera_restore_service='mariadb@db1' (mariadb@db1.service, active) does not run this node's server: its "
        "process 42 (pid file /run/mysqld/mysqld.pid) belongs to the unit mariadb@db2.service. systemctl stop "
        "mariadb@db1.service would not stop it and would stop another server: set galera_restore_service to "
        "'mariadb@db2.service' or galera_restore_stop_command")
    assert report["start"]["problem"] is None
    # A server started by hand: no unit stops it.
    report = _service.report({}, True, "mariadb", dict(LOADED, ActiveState="inactive", MainPID="0"),
                             dict(serving, unit=None))
    assert "belongs to no systemd service (started by hand or by another tool)" in report["stop"]["problem"]
    assert "would stop another server" not in report["stop"]["problem"]
    # A given stop command is the operator's: the unit is not asked about it.
    given = _service.report(dict(stop=["/usr/bin/true"]), True, "mariadb", missing, serving)
    assert given["stop"]["problem"] is None and given["start"]["problem"]
    # systemd could not tell: the checks that can be made are.
    assert _service.report({}, True, "mariadb", None, serving)["stop"]["problem"] is None


class Runner:
    def __init__(self, rc=0, out="", err=""):
        self.rc, self.out, self.err, self.calls = rc, out, err, []

    def run_command(self, argv, **kwargs):
        self.calls.append(argv)
        return self.rc, self.out, self.err


def test_a_failing_command_says_which_variable_and_why():
    runner = Runner(rc=1, err="mariadbd exited during start; error log:\n[ERROR] Aborting")
    with pytest.raises(GaleraError, match=r"galera_restore_start_command\) failed with exit status 1: .*Aborting"):
        _service.run(runner, dict(start=["/bin/false"]), "start")
    assert runner.calls == [["/bin/false"]]


def test_hostile_operator_commands_run_as_argv_never_through_a_shell(tmp_path, monkeypatch):
    # A start/stop command is the operator's argv: shell syntax in it reaches the program as text, through
    # AnsibleModule.run_command as the restore modules call it.
    from ansible.module_utils import basic
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": {}}).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    module = basic.AnsibleModule(argument_spec={})
    marker = tmp_path / "pwned"
    words = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}", f"&& touch {marker}", "'\"", "*", "~", "$HOME", "${PATH}"]
    for action in ("start", "bootstrap", "stop"):
        cmds = _service.commands({action: ["/bin/echo"] + words}, systemd=False)
        out = _service.run(module, cmds, action)
        assert out["stdout"].rstrip("\n") == " ".join(words)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Names

def test_aside_and_staging_names_are_siblings_of_the_data_directory():
    moment = datetime(2026, 12, 1, 10, 11, 12, tzinfo=timezone.utc)
    assert _recovery.aside_name("/var/lib/mysql/", moment) == "/var/lib/mysql.dbtools-20261201T101112Z"
    assert _recovery.staging_name("/srv/db", "0a1b2c3d") == "/srv/db.dbtools-restore-0a1b2c3d"
    assert _recovery.staging_run("/srv/db", "db.dbtools-restore-0a1b2c3d") == "0a1b2c3d"
    assert _recovery.staging_run("/srv/db", "db.dbtools-restore-../x") is None
    assert _recovery.staging_run("/srv/db", "other.dbtools-restore-0a1b2c3d") is None
    with pytest.raises(ValueError):
        _recovery.staging_name("/srv/db", "../../etc")


def test_the_configuration_is_read_as_the_server_reads_it():
    lines = ["--socket=/run/mysqld/mysqld.sock", "--pid-file=/run/mysqld/mysqld.pid", "--log_error=error.log",
             "--wsrep_cluster_name=first", "--wsrep-cluster-name=dbtools", "--datadir=/srv/mysql/"]
    config = _recovery.server_config(_recovery.parse_defaults(lines))
    assert config["cluster_name"] == "dbtools"  # the last one wins, - and _ alike
    assert config["datadir"] == "/srv/mysql" and config["log_error"] == "/srv/mysql/error.log"
    assert _recovery.server_config({}, "/data/db")["datadir"] == "/data/db"
    assert _recovery.server_config({})["datadir"] == "/var/lib/mysql"
    assert _recovery.server_config({})["cluster_name"] == "my_wsrep_cluster"


# ---------------------------------------------------------------------------------------------
# Settings

@pytest.mark.parametrize("changes, expected", [
    (dict(datadir="/"), "datadir='/'"),
    (dict(datadir="/etc"), "system directory"),
    (dict(datadir="/var/lib/../../etc"), "normalised"),
    (dict(datadir="relative/dir"), "absolute"),
    (dict(datadir="/var/lib/mysql\n/etc"), "absolute, normalised"),
    (dict(joiners="rsync"), "galera_restore_joiners"),
    (dict(id="$(reboot)"), "galera_restore_id"),
    (dict(id="../dbtools_x_20261201T030000Z"), "galera_restore_id"),
    (dict(source="nowhere", stores=[dict(name="s3", type="s3")]), "names no store"),
    (dict(start_command="galera-node start"), "galera_restore_start_command"),
    (dict(stop_command=["ok", "`reboot`\n"]), "galera_restore_stop_command"),
    (dict(first_node="galera-node9"), "galera_restore_first_node"),
    (dict(work_dir="/"), "galera_restore_work_dir"),
    (dict(timeout=0), "galera_restore_timeout"),
    (dict(until="yesterday"), "galera_restore_until"),
    (dict(until="1-1-$(reboot)"), "galera_restore_until"),
])
def test_wrong_settings_are_named(changes, expected):
    errors = _recovery.check_settings(settings(**changes), HOSTS)
    assert any(expected in e for e in errors), errors
    assert not any(e.endswith("Nothing was changed.") for e in errors)


def test_good_settings_pass():
    assert _recovery.check_settings(settings(source="ssh-store", stores=[dict(name="ssh-store", type="ssh")],
                                             datadir="/var/lib/mysql", start_command=["galera-node", "start"]),
                                    HOSTS) == []


# ---------------------------------------------------------------------------------------------
# restore_cluster's plan

def stopped_cluster(backups_on=None, **kw):
    return {h: fact(backups=[summary(**kw)] if h in (backups_on or HOSTS) else []) for h in HOSTS}


def test_a_stopped_cluster_is_restored_first_node_bootstraps_the_others_join_by_ist():
    plan = _recovery.plan_cluster(stopped_cluster(), HOSTS, settings())
    assert plan["ok"], plan["message"]
    assert plan["first"] == "galera-node1" and plan["joiners"] == ["galera-node2", "galera-node3"]
    assert plan["needing"] == HOSTS and plan["stop"] == []
    assert "join by IST from the same backup" in plan["message"]


def test_with_sst_joiners_only_the_first_node_needs_the_backup():
    plan = _recovery.plan_cluster(stopped_cluster(backups_on=["galera-node3"]), HOSTS, settings(joiners="sst"))
    assert plan["ok"], plan["message"]
    assert plan["first"] == "galera-node3" and plan["needing"] == ["galera-node3"]


def test_a_running_primary_component_is_refused_without_the_clusters_name():
    facts = stopped_cluster()
    facts["galera-node2"] = fact(running=True, primary=True, state=4, backups=[summary()])
    plan = _recovery.plan_cluster(facts, HOSTS, settings())
    assert not plan["ok"]
    assert "galera-node2 runs a server in a Primary component" in plan["message"]
    assert "galera_restore_confirm=dbtools" in plan["message"] and "Nothing was changed" in plan["message"]
    assert plan["needing"] == [] and plan["stop"] == []
    wrong = _recovery.plan_cluster(facts, HOSTS, settings(confirm="dbtools2"))
    assert not wrong["ok"] and "does not name this cluster" in wrong["message"]
    confirmed = _recovery.plan_cluster(facts, HOSTS, settings(confirm="dbtools"))
    assert confirmed["ok"] and confirmed["stop"] == ["galera-node2"]
    assert "stopping galera-node2 first (disaster restore confirmed)" in confirmed["message"]


def test_a_running_server_outside_a_primary_component_is_refused_too():
    facts = stopped_cluster()
    facts["galera-node1"] = fact(running=False, process=True, backups=[summary()])
    plan = _recovery.plan_cluster(facts, HOSTS, settings())
    assert not plan["ok"] and "galera-node1 runs a server (not in a Primary component)" in plan["message"]


@pytest.mark.parametrize("changes, expected", [
    (dict(cluster="other"), "backup dbtools_galera-node3_20261201T030000Z-1a2b3c4d is of cluster 'other'"),
    (dict(restorable=False, broken="dbtools_x, the parent of y, is missing"), "the parent of y, is missing"),
    (dict(method="mysqldump"), "restore_logical"),
    (dict(seqno=None), "no Galera position"),
])
def test_a_backup_that_cannot_rebuild_this_cluster_is_refused(changes, expected):
    plan = _recovery.plan_cluster(stopped_cluster(**changes), HOSTS, settings(id=BACKUP))
    assert not plan["ok"] and expected in plan["message"], plan["message"]


def test_the_newest_restorable_backup_of_this_cluster_is_chosen():
    older = summary("dbtools_galera-node3_20261130T030000Z-00000001", finished="2026-11-30T03:01:00Z")
    other = summary("other_galera-node3_20261202T030000Z-00000002", cluster="other", finished="2026-12-02T03:01:00Z")
    broken = summary("dbtools_galera-node3_20261202T030000Z-00000003", restorable=False, finished="2026-12-02T04:00:00Z")
    facts = {h: fact(backups=[older, summary(), other, broken]) for h in HOSTS}
    plan = _recovery.plan_cluster(facts, HOSTS, settings())
    assert plan["ok"] and plan["backup"]["id"] == BACKUP


def test_a_missing_backup_and_a_local_backup_missing_on_a_joiner_are_named():
    plan = _recovery.plan_cluster(stopped_cluster(), HOSTS, settings(id="dbtools_galera-node3_20261101T030000Z-deadbeef"))
    assert not plan["ok"] and "is not at the source" in plan["message"]
    plan = _recovery.plan_cluster(stopped_cluster(backups_on=["galera-node3"]), HOSTS, settings())
    assert not plan["ok"] and "is not in /var/backups/galera on galera-node1, galera-node2" in plan["message"]
    assert "galera_restore_joiners=sst" in plan["message"]


def test_nodes_of_different_clusters_are_refused():
    facts = stopped_cluster()
    facts["galera-node3"]["config"]["cluster_name"] = "prod"
    plan = _recovery.plan_cluster(facts, HOSTS, settings())
    assert not plan["ok"] and "configured for different clusters" in plan["message"]


def commands_report(**problems):
    return {a: dict(argv=["x"], problem=problems.get(a)) for a in ("start", "bootstrap", "stop")}


def test_a_command_the_plan_needs_and_cannot_run_refuses_before_anything_changes():
    facts = stopped_cluster()
    for host in HOSTS:
        facts[host]["commands"] = commands_report(bootstrap="no bootstrap here")
    facts["galera-node3"]["commands"] = commands_report(start="galera_restore_start_command is not set")
    plan = _recovery.plan_cluster(facts, HOSTS, settings())
    assert not plan["ok"] and plan["needing"] == [] and "Nothing was changed" in plan["message"]
    # Only what the plan runs: node1 bootstraps (refused), node2 starts (fine), node3 starts (refused).
    assert plan["errors"] == ["galera-node1 must bootstrap its server: no bootstrap here",
                              "galera-node3 must start its server: galera_restore_start_command is not set"]
    facts["galera-node1"]["commands"] = commands_report(start="not needed on the first node")
    facts["galera-node3"]["commands"] = commands_report()
    assert _recovery.plan_cluster(facts, HOSTS, settings())["ok"]
    # A confirmed disaster restore stops the running servers: their stop command is needed too.
    facts["galera-node2"] = dict(fact(running=True, primary=True, state=4, backups=[summary()]),
                                 commands=commands_report(stop="galera_restore_stop_command is not set"))
    plan = _recovery.plan_cluster(facts, HOSTS, settings(confirm="dbtools"))
    assert not plan["ok"] and plan["stop"] == []
    assert plan["errors"] == ["galera-node2 must stop its server: galera_restore_stop_command is not set"]


def test_settings_rendered_as_strings_by_older_cores_are_typed():
    # ansible-core 2.16-2.18 render the role's "{{ x | int }}" and "{{ x | bool }}" values as strings.
    old = settings(timeout="3600", sync_timeout="600", fresh_backup="False", allow_sst="False")
    assert _recovery.check_settings(old, HOSTS) == []
    plan = _recovery.plan_rebuild(running_cluster(cached=(900, 950)), HOSTS, "galera-node3", old)
    assert not plan["ok"] and plan["mode"] == "ist"  # "False" is false: no SST fallback
    assert _recovery.plan_rebuild(running_cluster(cached=(900, 950)), HOSTS, "galera-node3",
                                  dict(old, allow_sst="True"))["mode"] == "sst"
    assert "must be a positive number" in _recovery.check_settings(settings(timeout="0"), HOSTS)[0]


def test_a_node_that_could_not_be_inspected_is_refused():
    facts = stopped_cluster()
    facts["galera-node2"] = dict(failed=True, msg="my_print_defaults is not installed here")
    plan = _recovery.plan_cluster(facts, HOSTS, settings())
    assert not plan["ok"] and "galera-node2: its inspection failed: my_print_defaults" in plan["message"]


# ---------------------------------------------------------------------------------------------
# rebuild_node's plan and the gcache verdict

def running_cluster(cached=(6, 6), last=1200, target_running=False, **kw):
    facts = {"galera-node1": fact(running=True, primary=True, state=4, cached=cached[0], last=last),
             "galera-node2": fact(running=True, primary=True, state=4, cached=cached[1], last=last),
             "galera-node3": fact(running=target_running, primary=target_running, state=4 if target_running else None,
                                  backups=[summary(**kw)])}
    return facts


def test_a_lost_node_rebuilds_by_ist_when_gcache_holds_the_gap():
    plan = _recovery.plan_rebuild(running_cluster(), HOSTS, "galera-node3", settings())
    assert plan["ok"], plan["message"]
    assert plan["mode"] == "ist" and plan["donors"] == ["galera-node1", "galera-node2"]
    assert plan["ist"]["possible"] and plan["ist"]["behind"] == 1195
    assert "joins by IST (1195 write-sets behind the cluster (seqno 5 of 1200)" in plan["message"]


def test_when_gcache_misses_the_gap_the_refusal_says_by_how_much_and_how_big_gcache_is():
    plan = _recovery.plan_rebuild(running_cluster(cached=(900, 950)), HOSTS, "galera-node3", settings())
    assert not plan["ok"]
    text = plan["message"]
    assert "the backup is at seqno 5, 1195 write-sets behind the cluster (at 1200)" in text
    assert "gcache.size 256.0 MiB" in text and "from seqno 900" in text and "894 write-sets" in text
    assert "galera_rebuild_fresh_backup=true" in text and "galera_restore_allow_sst=true" in text
    assert "Nothing was changed" in text


def test_the_gap_falls_back_to_a_fresh_backup_or_sst_when_asked():
    facts = running_cluster(cached=(900, 950))
    fresh = _recovery.plan_rebuild(facts, HOSTS, "galera-node3",
                                   settings(fresh_backup=True, source="ssh", stores=[dict(name="ssh")]))
    assert fresh["ok"] and fresh["mode"] == "fresh" and fresh["survivors"] == ["galera-node1", "galera-node2"]
    local = _recovery.plan_rebuild(facts, HOSTS, "galera-node3", settings(fresh_backup=True))
    assert not local["ok"] and "needs galera_restore_source to name a store" in local["message"]
    sst = _recovery.plan_rebuild(facts, HOSTS, "galera-node3", settings(allow_sst=True))
    assert sst["ok"] and sst["mode"] == "sst" and "joins by full SST" in sst["message"]


def test_one_donor_holding_the_gap_is_enough_and_another_history_never_is():
    assert _recovery.plan_rebuild(running_cluster(cached=(900, 6)), HOSTS, "galera-node3", settings())["ok"]
    plan = _recovery.plan_rebuild(running_cluster(uuid=OTHER_UUID), HOSTS, "galera-node3", settings())
    assert not plan["ok"] and "no IST across histories" in plan["message"]


@pytest.mark.parametrize("cached, possible", [(6, True), (5, True), (1, True), (7, False), (0, False), (-1, False),
                                              (None, False)])
def test_ist_needs_a_donor_whose_gcache_starts_at_most_at_seqno_plus_one(cached, possible):
    verdict = _recovery.ist_verdict(summary(seqno=5), {"d": dict(cached_downto=cached, last_committed=9)}, UUID)
    assert verdict["possible"] is possible


def test_a_running_member_is_not_rebuilt():
    plan = _recovery.plan_rebuild(running_cluster(target_running=True), HOSTS, "galera-node3", settings())
    assert not plan["ok"] and "galera-node3 is a running member of the cluster" in plan["message"]


def test_no_rebuild_without_a_synced_primary_member():
    facts = running_cluster()
    for host in ("galera-node1", "galera-node2"):
        facts[host] = fact()
    plan = _recovery.plan_rebuild(facts, HOSTS, "galera-node3", settings())
    assert not plan["ok"] and "dbtools.galera.restore_cluster" in plan["message"]


def test_a_rebuild_target_that_cannot_be_started_is_refused():
    facts = running_cluster()
    facts["galera-node3"]["commands"] = commands_report(start="this host has no systemd and galera_restore_start_command "
                                                              "is not set", bootstrap="not needed for a rebuild")
    plan = _recovery.plan_rebuild(facts, HOSTS, "galera-node3", settings())
    assert not plan["ok"] and plan["errors"] == ["galera-node3 must start its server: this host has no systemd and "
                                                 "galera_restore_start_command is not set"]


def test_the_rebuild_target_must_be_a_host_of_the_play():
    plan = _recovery.plan_rebuild(running_cluster(), HOSTS, "galera-node9", settings())
    assert not plan["ok"] and "galera_restore_node='galera-node9'" in plan["message"]


# ---------------------------------------------------------------------------------------------
# How a node joined

def test_a_joiner_that_kept_its_position_joined_by_ist():
    verdict = _recovery.how_joined(IST_LOG)
    assert verdict["method"] == "IST"
    assert verdict["writesets"] == 3 and verdict["seqnos"] == "6-8" and verdict["donor"] == "recov-exp1"
    assert verdict["local_position"] == f"{UUID}:5"


def test_a_joiner_that_received_a_donors_state_joined_by_sst():
    verdict = _recovery.how_joined(SST_LOG)
    assert verdict["method"] == "SST" and verdict["sst_position"] == f"{UUID}:10"


def test_only_the_last_start_counts():
    assert _recovery.how_joined(_recovery.last_start(IST_LOG + SST_LOG))["method"] == "SST"
    assert _recovery.how_joined(_recovery.last_start(SST_LOG + IST_LOG))["method"] == "IST"


def test_without_a_saved_state_line_the_written_position_is_used():
    text = "\n".join(line for line in IST_LOG.splitlines() if "Found saved state" not in line)
    assert _recovery.how_joined(text, dict(cluster_uuid=UUID, seqno=5))["method"] == "IST"
    assert _recovery.how_joined(text, dict(cluster_uuid=UUID, seqno=4))["method"] == "SST"


def test_no_transfer_and_no_log():
    assert _recovery.how_joined("WSREP: Synchronized with group, ready for connections")["method"] == "none"
    assert _recovery.how_joined("")["method"] == "unknown"


# ---------------------------------------------------------------------------------------------
# The verification verdict

def node(tables, checksums):
    return dict(tables=tables, checksums={k: dict(checksum=v, rows=1) for k, v in checksums.items()})


RECORDED = {"sbtest.sbtest1": dict(schema="sbtest", table="sbtest1", checksum=11, rows=1),
            "dbtools_galera.desync_lease": dict(schema="dbtools_galera", table="desync_lease", checksum=99, rows=1)}
EXPECTED = [["sbtest", "sbtest1", 100], ["dbtools_galera", "desync_lease", 10]]


def good_nodes(**override):
    nodes = {h: node(EXPECTED, {"sbtest.sbtest1": 11, "dbtools_galera.desync_lease": 0}) for h in HOSTS}
    nodes.update(override)
    return nodes


def test_every_node_equal_to_the_backups_checksums_passes_with_the_cleared_lease_compared_across_nodes():
    verdict = _recovery.table_verdict(EXPECTED, RECORDED, good_nodes(), skip=["dbtools_galera.desync_lease"])
    assert verdict["ok"], verdict["message"]
    assert verdict["compared_recorded"] == 1 and verdict["skipped"] == ["dbtools_galera.desync_lease"]
    assert verdict["message"] == ("2 tables of the backup present on 3 nodes; 1 checksum equal to the backup's restore "
                                  "verification on every node; 1 more table checksum equal across the nodes; "
                                  "dbtools_galera.desync_lease changed by the restore (the backup's lease row was cleared)")


def test_a_checksum_that_differs_from_the_backups_on_one_node_fails():
    verdict = _recovery.table_verdict(EXPECTED, RECORDED, good_nodes(**{"galera-node2": node(
        EXPECTED, {"sbtest.sbtest1": 12, "dbtools_galera.desync_lease": 0})}), skip=["dbtools_galera.desync_lease"])
    assert not verdict["ok"]
    assert verdict["mismatched"] == [dict(table="sbtest.sbtest1", node="galera-node2", checksum=12, expected=11, rows=1,
                                          expected_rows=1)]
    assert "sbtest.sbtest1 on galera-node2 (12 != 11)" in verdict["message"]


def test_a_missing_table_and_nodes_that_disagree_fail():
    verdict = _recovery.table_verdict(EXPECTED, RECORDED, good_nodes(**{"galera-node3": node(
        EXPECTED[1:], {"dbtools_galera.desync_lease": 1})}), skip=["dbtools_galera.desync_lease"])
    assert not verdict["ok"]
    assert verdict["missing"] == {"galera-node3": ["sbtest.sbtest1"]}
    assert "sbtest.sbtest1" in verdict["differ"] and "dbtools_galera.desync_lease" in verdict["differ"]


def test_without_recorded_checksums_the_nodes_are_compared_with_each_other_and_it_says_so():
    verdict = _recovery.table_verdict([], {}, good_nodes())
    assert verdict["ok"] and verdict["message"] == "2 table checksums equal across the nodes"
    verdict = _recovery.table_verdict(EXPECTED, {}, good_nodes())
    assert verdict["ok"] and "the nodes were compared with each other only" in verdict["message"]


def test_ignored_schemas_leave_the_comparison_altogether():
    nodes = {h: node([["sbtest", "sbtest1"]], {"sbtest.sbtest1": 11}) for h in HOSTS}
    assert not _recovery.table_verdict(EXPECTED, RECORDED, nodes)["ok"]
    assert _recovery.table_verdict(EXPECTED, RECORDED, nodes, ignore_schemas=["dbtools_galera"])["ok"]


def test_the_drill_record_names_the_backup_and_the_result():
    record = _recovery.drill_record("dbtools", "ok", "2026-12-01T10:00:00Z", "2026-12-01T10:01:00Z", 60.04, "drill1",
                                    summary(), dict(tables=5), source="ssh://root@store:22/srv/x")
    assert record["kind"] == "dbtools.galera restore drill" and record["duration_seconds"] == 60.0
    assert record["backup"]["id"] == BACKUP and record["backup"]["position"] == dict(cluster_uuid=UUID, seqno=5)


def test_the_time_from_start_to_synced_comes_from_the_servers_own_log():
    assert _recovery.how_joined(IST_LOG)["log_seconds"] == 13
    assert _recovery.join_seconds("2026-12-02  1:52:35 0 [Note] Starting\n") is None
    assert _recovery.join_seconds("") is None
    # MariaDB 11 pads the hour.
    assert _recovery.join_seconds("2026-12-02 01:59:58 0 [Note] Starting\n"
                                  "2026-12-02 02:00:03 1 [Note] WSREP: Synchronized with group, ready for connections\n") == 5


def test_an_unreadable_source_is_named_in_the_refusal():
    facts = stopped_cluster(backups_on=["none"])
    facts["galera-node1"]["source"]["error"] = "cannot reach 10.0.0.9 (port 22) over SSH (connection refused)"
    plan = _recovery.plan_cluster(facts, HOSTS, settings())
    assert not plan["ok"] and "galera-node1 could not read the source: cannot reach 10.0.0.9" in plan["message"]


def pitr_cluster():
    """Three backups of the cluster (02:00, 03:00, 04:00; the 03:00 one without a binlog position) and one
    of another cluster at 05:00, on every node."""
    def one(hour, gtid, cluster="dbtools"):
        backup = summary(backup_id=f"{cluster}_galera-node3_20261201T0{hour}0000Z-0000000{hour}", cluster=cluster,
                         finished=f"2026-12-01T0{hour}:01:00Z")
        backup["position"]["binlog_gtid"] = gtid
        return backup
    backups = [one(2, "1-1-100"), one(3, None), one(4, "1-1-300,2-2-5"), one(5, "1-1-400", cluster="other")]
    return {h: fact(backups=backups) for h in HOSTS}


@pytest.mark.parametrize("until, chosen", [
    ("2026-12-01T04:30:00Z", "04"),    # the newest before the time
    ("2026-12-01T03:59:00Z", "02"),    # 04:00 finished after it; 03:00 has no binlog position to replay from
    ("1-1-299", "02"),                 # GTID: the newest at or below the sequence number of its domain
    ("1-1-300", "04"),
    ("latest", "04"),
    ("", "04"),                        # no PITR: the newest restorable backup
])
def test_a_point_in_time_restore_picks_the_newest_backup_before_the_target(until, chosen):
    plan = _recovery.plan_cluster(pitr_cluster(), HOSTS, settings(until=until))
    assert plan["ok"], plan["message"]
    assert plan["backup"]["id"] == f"dbtools_galera-node3_20261201T{chosen}0000Z-0000000{int(chosen)}"


@pytest.mark.parametrize("until", ["2026-12-01T01:00:00Z", "1-1-99", "3-3-1000"])
def test_no_backup_before_the_target_is_refused_naming_the_oldest(until):
    plan = _recovery.plan_cluster(pitr_cluster(), HOSTS, settings(until=until))
    assert not plan["ok"] and f"before galera_restore_until={until}" in plan["message"]
    assert "dbtools_galera-node3_20261201T020000Z-00000002" in plan["message"]
