# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The backup's plan: the settings check, the cluster verdict and the node choice (pure)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _plan

HOSTS = ["db1", "db2", "db3"]
GOOD = dict(dir="/var/backups/galera", method="auto", compress="zstd", compress_level=3, threads=2, extra_args=[],
            type="full", max_incrementals=6, verify="checksum", verify_sample=20, verify_dir="",
            free_space_factor=1.2, file_owner="root", file_group="root", throttle=0, nice=10,
            ionice_class="best-effort", ionice_level=7, max_duration=21600, encrypt=False, encrypt_key="",
            encrypt_key_file="", lease_database="dbtools_galera", lease_ttl=300, retention=7, sample_seconds=2.0)


def member(state="Synced", status="Primary", size=3, desync=False, uuid="u1", rate=0.0, lease=None,
           flavor="mariadb"):
    return dict(node=dict(local_state_comment=state, cluster_status=status, desync=desync),
                cluster=dict(state_uuid=uuid, size=size), writes=dict(local_commits_per_second=rate),
                lease=lease, server=dict(flavor=flavor))


def healthy(**over):
    members = {h: member(rate=r) for h, r in zip(HOSTS, (150.0, 0.0, 0.0))}
    members.update(over)
    return members


def test_healthy_cluster_chooses_the_last_listed_idle_member_not_the_writer():
    result = _plan.plan(healthy(), HOSTS, HOSTS, GOOD)
    assert result["ok"], result["errors"]
    assert result["node"] == "db3"
    assert result["method"] == "mariabackup"
    assert "fewest client commits" in result["choice"]
    assert result["owner"].startswith("galera_backup:")


def test_explicit_node_and_awx_owner():
    result = _plan.plan(healthy(), HOSTS, HOSTS, GOOD, node="db1", awx_job_id=42)
    assert result["ok"] and result["node"] == "db1"
    assert result["owner"] == "galera_backup:awx-job-42"


@pytest.mark.parametrize("over, text", [
    (dict(db2=member(state="Donor/Desynced")), "db2 is Donor/Desynced, not Synced"),
    (dict(db2=member(status="non-Primary")), "db2 is not in a Primary component"),
    (dict(db3=member(desync=True)), "db3 has wsrep_desync=ON"),
    (dict(db3=member(size=2)), "db3 sees 2 members, 3 expected"),
    (dict(db3=member(uuid="u2")), "different clusters"),
    (dict(db1=member(lease=dict(node="db2", owner="x", expires_at="2026", expired=False))),
     "another desync holds the lease: node db2 by owner 'x'"),
])
def test_unhealthy_cluster_is_refused_with_the_reason_and_every_member(over, text):
    result = _plan.plan(healthy(**over), HOSTS, HOSTS, GOOD)
    assert not result["ok"]
    assert any(text in e for e in result["errors"]), result["errors"]
    assert "The cluster is not healthy enough for a backup; nothing was changed" in result["message"]
    assert "db1: Synced / Primary" in result["message"]


def test_expired_lease_does_not_block():
    lease = dict(node="db2", owner="x", expires_at="2026", expired=True)
    assert _plan.plan(healthy(db1=member(lease=lease, rate=150.0)), HOSTS, HOSTS, GOOD)["ok"]


def test_unreachable_host_refuses():
    members = healthy()
    del members["db2"]
    result = _plan.plan(members, HOSTS, ["db1", "db3"], GOOD)
    assert not result["ok"] and "failed or are unreachable: db2" in result["errors"][0]


def test_explicit_node_outside_the_play():
    result = _plan.plan(healthy(), HOSTS, HOSTS, GOOD, node="db9")
    assert not result["ok"] and any("db9 is not a host of this play" in e for e in result["errors"])


HOSTILE_DIRS = ["", "relative/dir", "/", "/var/lib/mysql", "/var/lib/mysql/backups", "/tmp", "/etc", "/etc/backups",
                "/var/backups/../lib/mysql", "/var/backups//galera", "/var/backups/galera\n/etc", "/usr/local/x",
                "/var/backups/./galera", "/proc/1", "/var/lib", "/srv"]


@pytest.mark.parametrize("path", HOSTILE_DIRS)
def test_hostile_backup_dirs_are_refused_by_the_settings_check(path):
    errors = _plan.check_settings(dict(GOOD, dir=path))
    assert errors and "galera_backup_dir" in errors[0], errors


@pytest.mark.parametrize("path", ["/var/backups/galera", "/srv/backups/galera $(id)", "/backups/it's"])
def test_unusual_but_harmless_dirs_pass_the_text_check(path):
    # Metacharacters are harmless: the path never reaches a shell; it is only ever an argv element.
    assert _plan.check_settings(dict(GOOD, dir=path)) == []


@pytest.mark.parametrize("over, text", [
    (dict(lease_ttl=5), "lease_ttl=5 must be at least 10"),
    (dict(retention=0), "retention=0 must be at least 1"),
    (dict(compress_level=20), "compress_level=20 must be 1 to 19"),
    (dict(nice=30), "nice=30"),
    (dict(encrypt=True, compress="none", encrypt_key="k"), "encrypt needs galera_backup_compress=zstd"),
    (dict(encrypt=True), "neither galera_backup_encrypt_key nor"),
    (dict(encrypt=True, encrypt_key="k", method="mydumper"), "cannot encrypt mydumper"),
    (dict(type="incremental", method="mysqldump"), "incremental needs a physical method"),
    (dict(verify="prepare", method="mydumper"), "verify=prepare needs a physical"),
    (dict(file_owner="root'; rm -rf /"), "galera_backup_file_owner"),
    (dict(file_group="$(id)"), "galera_backup_file_group"),
    (dict(extra_args=["--defaults-file=/tmp/x"]), "the option file is the collection's"),
    (dict(extra_args=["--x\n--y"]), "control character"),
    (dict(encrypt=True, encrypt_key_file="relative/key"), "encrypt_key_file"),
    (dict(encrypt=True, encrypt_key_file="/root/../etc/shadow"), "encrypt_key_file"),
    (dict(verify_dir="/tmp"), "galera_backup_verify_dir"),
])
def test_bad_settings_are_named(over, text):
    errors = _plan.check_settings(dict(GOOD, **over))
    assert any(text in e for e in errors), errors


def as_old_cores_render(settings):
    """The settings dict as ansible-core 2.16-2.18 render the role's "{{ x | int }}" values: strings."""
    return {k: (str(v) if isinstance(v, (bool, int, float)) else v) for k, v in settings.items()}


def test_settings_rendered_as_strings_by_older_cores_are_typed_before_the_rules():
    # Failed with "'>=' not supported between instances of 'str' and 'int'" under ansible-core 2.16, and
    # encrypt="False" counted as true.
    old = as_old_cores_render(dict(GOOD, drain_timeout=300, min_free_fraction=0.05, hard_limit_fraction=0.5))
    assert old["encrypt"] == "False" and old["lease_ttl"] == "300"
    assert _plan.check_settings(old) == []
    assert _plan.plan(healthy(), HOSTS, HOSTS, old)["ok"]
    assert _plan.typed_settings(old)["encrypt"] is False and _plan.typed_settings(old)["min_free_fraction"] == 0.05
    errors = _plan.check_settings(as_old_cores_render(dict(GOOD, lease_ttl=5, encrypt=True)))
    assert any("lease_ttl=5 must be at least 10" in e for e in errors)
    assert any("neither galera_backup_encrypt_key nor" in e for e in errors)


def test_bad_settings_refuse_the_plan():
    result = _plan.plan(healthy(), HOSTS, HOSTS, dict(GOOD, dir="/"))
    assert not result["ok"] and result["errors"][0].startswith("settings: galera_backup_dir=/")


def test_owner_with_control_characters_is_refused():
    result = _plan.plan(healthy(), HOSTS, HOSTS, GOOD, owner="me\nyou")
    assert not result["ok"]


def test_default_owner_is_unique_per_microsecond():
    moment = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert _plan.default_owner(None, "ctl", moment) == "galera_backup:ctl:20261201T100000.123456"


@pytest.mark.parametrize("method, flavor, tool", [
    ("auto", "mariadb", "mariabackup"), ("auto", "percona-xtradb-cluster", "xtrabackup"),
    ("mydumper", "mariadb", "mydumper")])
def test_resolve_method(method, flavor, tool):
    assert _plan.resolve_method(method, flavor) == tool


def test_two_hosts_reaching_the_same_server_are_refused():
    members = healthy()
    for host in HOSTS:
        members[host]["status"] = {"wsrep_gcomm_uuid": f"uuid-{host}"}
        members[host]["node"]["node_name"] = host
    assert _plan.plan(members, HOSTS, HOSTS, GOOD)["ok"]
    # db3's login points at db2's server: both answer as db2.
    members["db3"]["status"] = {"wsrep_gcomm_uuid": "uuid-db2"}
    members["db3"]["node"]["node_name"] = "db2"
    result = _plan.plan(members, HOSTS, HOSTS, GOOD)
    assert not result["ok"]
    assert any("db2 and db3 reach the same server (db2)" in e for e in result["errors"]), result["errors"]
