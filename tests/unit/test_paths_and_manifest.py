# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Paths an operator gives, backup ids, run records and the manifest, on real temporary directories."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _manifest, _paths, _tools
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

UID = os.getuid()


def test_existing_directory_is_never_changed_and_must_be_ours(tmp_path):
    target = tmp_path / "b"
    target.mkdir(mode=0o755)
    before = os.stat(target)
    assert _paths.check_existing_dir(str(target), "galera_backup_dir", UID) is True
    after = os.stat(target)
    assert (before.st_mode, before.st_uid) == (after.st_mode, after.st_uid)
    with pytest.raises(GaleraError, match="not by the configured owner"):
        _paths.check_existing_dir(str(target), "galera_backup_dir", UID + 1)


def test_world_writable_directory_is_refused(tmp_path):
    target = tmp_path / "open"
    target.mkdir()
    os.chmod(target, 0o777)
    with pytest.raises(GaleraError, match="writable by every user"):
        _paths.check_existing_dir(str(target), "galera_backup_dir", UID)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777


def test_symlink_and_file_are_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GaleraError, match="symbolic link"):
        _paths.check_existing_dir(str(tmp_path / "link"), "v", UID)
    with pytest.raises(GaleraError, match="not a directory"):
        _paths.check_existing_dir(str(tmp_path / "file"), "v", UID)


def test_missing_directory_is_created_0700_only_when_missing(tmp_path):
    target = tmp_path / "a" / "b"
    assert _paths.check_existing_dir(str(target), "v", UID) is False
    assert _paths.make_dir(str(target), UID, os.getgid()) is True
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    os.chmod(target, 0o750)
    assert _paths.make_dir(str(target), UID, os.getgid()) is False
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750


@pytest.mark.parametrize("a, b, related", [
    ("/var/lib/mysql", "/var/lib/mysql", True), ("/var/lib/mysql/x", "/var/lib/mysql", True),
    ("/var/lib", "/var/lib/mysql", True), ("/var/lib/mysql2", "/var/lib/mysql", False),
    ("/srv/b", "/var/lib/mysql", False)])
def test_related(a, b, related):
    assert _paths.related(a, b) is related


def test_backup_dir_apart_from_datadir_and_gcache():
    with pytest.raises(GaleraError, match="overlaps the server's data directory"):
        _paths.check_apart("/data/mysql/backups", "galera_backup_dir", {"the server's data directory": "/data/mysql"})
    with pytest.raises(GaleraError, match="overlaps the gcache directory"):
        _paths.check_apart("/data", "galera_backup_dir", {"the gcache directory": "/data/gcache"})
    _paths.check_apart("/backups", "galera_backup_dir", {"the server's data directory": "/data/mysql"})


@pytest.mark.parametrize("name", ["root", "mysql", "backup-user", "svc$"])
def test_account_names_accepted_syntax(name):
    try:
        _paths.account(name, "v")
    except GaleraError as exc:
        assert "names no user" in exc.msg


@pytest.mark.parametrize("name", ["root'", "a b", "$(id)", "`id`", "../x", "", "a\nb"])
def test_account_names_refused(name):
    with pytest.raises(GaleraError, match="is not a user name"):
        _paths.account(name, "galera_backup_file_owner")


# ---------------------------------------------------------------------------------------------
# ids

MOMENT = datetime(2026, 12, 1, 3, 4, 5, tzinfo=timezone.utc)


def test_backup_id_round_trip_and_old_ids():
    backup = _manifest.backup_id("my cluster", "db/3", MOMENT, "0123abcd")
    assert backup == "my-cluster_db-3_20261201T030405Z-0123abcd"
    parsed = _manifest.parse_id(backup)
    assert parsed["run"] == "0123abcd" and parsed["time"] == MOMENT
    old = _manifest.parse_id("prod_db1_20261125T030000Z")
    assert old is not None and old["run"] is None


@pytest.mark.parametrize("name", ["prod_logs", "prod_binlogs", "..", "prod_db1_20261125T030000Z.partial",
                                  "prod_db1_20261125T030000Z-XYZ", "x/y_20261125T030000Z", "a_20261399T250000Z",
                                  "prod_db1_20261125T030000Z\n"])
def test_names_that_are_not_backup_ids(name):
    assert _manifest.parse_id(name) is None


def test_id_prefix_alone_cannot_prove_the_cluster():
    # cluster "prod" + node "east_db1" and cluster "prod_east" + node "db1" give the same id prefix:
    # id_of_cluster is necessary, the manifest/run record (same_cluster) decides.
    backup = _manifest.backup_id("prod_east", "db1", MOMENT, "0123abcd")
    assert _manifest.id_of_cluster(backup, "prod") and _manifest.id_of_cluster(backup, "prod_east")
    record = dict(cluster=dict(name="prod_east", state_uuid="u1"))
    assert not _manifest.same_cluster(record, "prod")
    assert _manifest.same_cluster(record, "prod_east", "u1")
    assert not _manifest.same_cluster(record, "prod_east", "u2")
    assert _manifest.same_cluster(record, "prod_east", None)


def test_sanitize_never_gives_a_path_component():
    assert _manifest.sanitize("..") not in (".", "..")
    assert "/" not in _manifest.sanitize("a/../b")


def test_write_json_atomic_is_0600_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.json"
    _manifest.write_json_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["m.json"]


RUN = dict(id="c_n_20261201T030405Z-0123abcd", run_id="0123abcd", tool="mariabackup", type="full", parent=None,
           chain=[], node=dict(name="n", wsrep_node_name="n"), cluster=dict(name="c", state_uuid="u", size=3),
           server=dict(flavor="mariadb", version="10.11", provider_version="26.4"), started_at="2026-12-01T03:04:05Z",
           started_epoch=MOMENT.timestamp(), owner="o")
OUT = dict(checksum=dict(bytes=10, files=2, sha256="a" * 64), galera_info="u:42 ", to_lsn=5, from_lsn=0,
           tool_seconds=3.5, verify=dict(level="checksum", result="ok"))


def test_manifest_records_unknown_flow_control_as_null_never_zero():
    manifest = _manifest.build(RUN, OUT, {}, {"drained": True}, "2026-12-01T03:05:05Z", dict(ionice_class="none"))
    assert manifest["desync"]["flow_control_sent"] is None
    manifest = _manifest.build(RUN, OUT, {}, {"flow_control_sent": 0}, "2026-12-01T03:05:05Z",
                               dict(ionice_class="none"))
    assert manifest["desync"]["flow_control_sent"] == 0


def test_manifest_position_and_chain():
    settings = dict(ionice_class="best-effort", ionice_level=7)
    manifest = _manifest.build(RUN, OUT, {}, {}, "2026-12-01T03:05:05Z", settings)
    assert manifest["position"]["cluster_uuid"] == "u" and manifest["position"]["seqno"] == 42
    assert manifest["chain"] == [RUN["id"]] and manifest["format"] == 1 and manifest["duration_seconds"] == 60.0
    assert manifest["throttle"]["ionice"] == "best-effort/7"
    problems = []
    assert _manifest.check_manifest(manifest, RUN["id"], "x", problems) is not None, problems


# ---------------------------------------------------------------------------------------------
# the option file

def test_option_file_quotes_and_refuses_newlines():
    text = _tools.option_file_text(dict(login_user='u"x', login_password='p\\"#;w', login_unix_socket="/s"))
    assert 'user="u\\"x"' in text and 'password="p\\\\\\"#;w"' in text and 'socket="/s"' in text
    with pytest.raises(GaleraError, match="control character"):
        _tools.option_file_text(dict(login_user="u", login_password="a\nhost=evil"))
    tcp = _tools.option_file_text(dict(login_host="10.0.0.3", login_port=3307, ca_cert="/ca.pem"))
    assert 'host="10.0.0.3"' in tcp and 'port="3307"' in tcp and 'protocol="TCP"' in tcp
    assert "ssl-verify-server-cert" in tcp


def test_quote_identifier_doubles_backticks():
    assert _tools.quote_identifier("a`b") == "`a``b`"
    assert _tools.quote_identifier("x`; SELECT 1 INTO OUTFILE '/tmp/x") == "`x``; SELECT 1 INTO OUTFILE '/tmp/x`"
