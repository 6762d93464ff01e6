# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The local side of galera_backup_copy on real backup directories, and the module through its real
entry point with a local destination directory. SSH and S3: test_stores.py and tests/integration."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _manifest, _proc, _stores

import module_helpers  # pylint: disable=import-error
from stores_helpers import UUID, OTHER_UUID, make_backup, sums_of  # pylint: disable=import-error


def test_parse_sums_accepts_sha256sum_output_and_rejects_escapes():
    digest = "a" * 64
    assert _stores.parse_sums(f"{digest}  ./x.zst\n{digest} *./d/y\n") == [("x.zst", digest), ("d/y", digest)]
    for bad in (f"{digest}  ../etc/passwd", f"{digest}  /etc/passwd", f"{digest}  ./a/../../b", "nonsense",
                f"{digest}  ./manifest.json", f"{digest}  ./.run.json", f"{digest}  ./a\x1bb"):
        with pytest.raises(ValueError):
            _stores.parse_sums(bad)


def test_local_backup_lists_files_and_leaves_out_unlisted_ones(tmp_path):
    directory, _manifest_dict = make_backup(tmp_path, "c1_n1_20261125T030000Z")
    with open(os.path.join(directory, "stray.log"), "w", encoding="utf-8") as handle:
        handle.write("not listed")
    local = _stores.LocalBackup(directory)
    assert local.id == "c1_n1_20261125T030000Z"
    assert (local.cluster, local.state_uuid) == ("c1", UUID)
    assert local.files == ["backup.xbstream.zst", "meta/checkpoints", "SHA256SUMS", "manifest.json"]
    assert local.excluded == ["stray.log"]
    assert local.bytes == sum(os.path.getsize(os.path.join(directory, rel)) for rel in local.files)
    assert local.damaged(local.files) == []
    with open(os.path.join(directory, "meta", "checkpoints"), "w", encoding="utf-8") as handle:
        handle.write("to_lsn = 2\n")
    assert local.damaged(local.files) == ["meta/checkpoints"]


def test_local_backup_refuses_incomplete_or_inconsistent_directories(tmp_path):
    directory, _m = make_backup(tmp_path, "c1_n1_20261125T030000Z-0a1b2c3d")
    with open(os.path.join(directory, "SHA256SUMS"), "a", encoding="utf-8") as handle:
        handle.write("\n")
    with pytest.raises(_stores.GaleraError, match="inconsistent"):
        _stores.LocalBackup(directory)
    os.remove(os.path.join(directory, "manifest.json"))
    with pytest.raises(_stores.GaleraError, match="has no manifest.json"):
        _stores.LocalBackup(directory)
    with pytest.raises(_stores.GaleraError, match="not a directory"):
        _stores.LocalBackup(str(tmp_path / "missing"))
    other, _m = make_backup(tmp_path, "c1_n1_20261126T030000Z")
    os.remove(os.path.join(other, "backup.xbstream.zst"))
    with pytest.raises(_stores.GaleraError, match="incomplete"):
        _stores.LocalBackup(other)
    renamed, _m = make_backup(tmp_path, "c1_n1_20261127T030000Z")
    os.rename(renamed, str(tmp_path / "c1_n1_20261128T030000Z"))
    with pytest.raises(_stores.GaleraError, match="not its directory"):
        _stores.LocalBackup(str(tmp_path / "c1_n1_20261128T030000Z"))
    partial, _m = make_backup(tmp_path, "c1_n1_20261129T030000Z.partial")
    with pytest.raises(_stores.GaleraError, match="is not a backup id"):
        _stores.LocalBackup(partial)


def test_compare_names_damaged_missing_and_extra_files(tmp_path):
    directory, _manifest_dict = make_backup(tmp_path, "c1_n1_20261125T030000Z")
    local = _stores.LocalBackup(directory)
    good = {"manifest.json": local.manifest_sha, "SHA256SUMS": local.sums_sha}
    state = dict(files=local.files + [".run.json"], hashes=good, failed=[])
    assert _stores.compare(local, state, local.files) == ([], [])
    state = dict(files=["backup.xbstream.zst", "SHA256SUMS", "manifest.json", "junk"],
                 hashes=dict(good, **{"SHA256SUMS": "0" * 64}), failed=["meta/checkpoints"])
    assert _stores.compare(local, state, local.files) == (["SHA256SUMS", "meta/checkpoints"], ["junk"])
    # Hashed data files are compared too (S3 and local stores hash every file).
    state = dict(files=local.files, hashes=dict(good, **{"backup.xbstream.zst": "1" * 64}), failed=[])
    assert _stores.compare(local, state, local.files) == (["backup.xbstream.zst"], [])


# ---------------------------------------------------------------------------------------------
# The module, with a local destination

def run_module(args, check=False):
    return module_helpers.run_module("galera_backup_copy", args, check=check)


def stamp(days_ago):
    moment = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return moment, moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def backup(root, days_ago, cluster="prod", node="db1", uuid=UUID):
    moment, text = stamp(days_ago)
    backup_id = _manifest.backup_id(cluster, node, moment, "0123abcd")
    return make_backup(root, backup_id, cluster=cluster, finished=text, state_uuid=uuid)


def test_copy_module_copies_verifies_is_idempotent_and_repairs(tmp_path):
    src, _m = backup(tmp_path / "node", 0)
    dest = dict(type="local", path=str(tmp_path / "disk"))
    would = run_module(dict(src=src, dest=dest), check=True)
    assert not would.get("failed"), would
    assert would["changed"] is True and would["verified"] is False and not (tmp_path / "disk").exists()

    done = run_module(dict(src=src, dest=dest, name="disk"))
    assert not done.get("failed"), done
    assert done["changed"] and done["verified"] and done["url"] == os.path.join(dest["path"], os.path.basename(src))
    assert sums_of(done["url"]) == sums_of(src)
    assert run_module(dict(src=src, dest=dest))["changed"] is False

    with open(os.path.join(done["url"], "meta", "checkpoints"), "w", encoding="utf-8") as handle:
        handle.write("damaged\n")
    repaired = run_module(dict(src=src, dest=dest))
    assert repaired["changed"] is True and repaired["repaired"] == ["meta/checkpoints"]
    assert "does not match" in json.dumps(repaired["warnings"])
    assert sums_of(done["url"]) == sums_of(src)


def test_copy_module_refuses_a_different_backup_of_the_same_id(tmp_path):
    src, _m = backup(tmp_path / "node", 0)
    other_root = tmp_path / "disk"
    backup(other_root, 0)  # same id, other random data: another backup
    before = sums_of(str(other_root))
    result = run_module(dict(src=src, dest=dict(type="local", path=str(other_root)), name="disk"))
    assert result["failed"] and "DIFFERENT backup" in result["msg"] and result["msg"].startswith("copy to disk: ")
    assert "Nothing was changed" in result["msg"]
    assert sums_of(str(other_root)) == before


def test_copy_module_retention_deletes_only_what_is_ours(tmp_path):
    disk = tmp_path / "disk"
    old, _m = backup(disk, 10)
    theirs, _m = backup(disk, 11, cluster="prod_east")
    twin, _m = backup(disk, 12, node="db2", uuid=OTHER_UUID)   # my cluster's name, another cluster
    os.makedirs(disk / "prod_logs")
    (disk / "prod_logs" / "x.log").write_text("log")
    os.makedirs(disk / "prod_binlogs")
    east = _manifest.backup_id("prod_east", "db1", stamp(0)[0], "0123abcd")
    os.makedirs(disk / (east + ".partial"))
    _manifest.write_json_atomic(str(disk / (east + ".partial") / ".run.json"), _manifest.run_record(
        "0123abcd", east, "prod_east", None, None, "elsewhere", {}, stamp(0)[1]))
    # Written an hour ago on this host by a process that has ended: abandoned.
    moment, text = stamp(1 / 24)
    dead = _manifest.backup_id("prod", "db3", moment, "0123abcd")
    os.makedirs(disk / (dead + ".partial"))
    child = subprocess.Popen(["sleep", "30"])  # pylint: disable=consider-using-with
    gone = _proc.identity(child.pid)
    child.kill()
    child.wait()
    _manifest.write_json_atomic(str(disk / (dead + ".partial") / ".run.json"), _manifest.run_record(
        "0123abcd", dead, "prod", UUID, None, _stores.this_host(), gone, text))
    # The same, but its process still runs (this test): in flight.
    live = _manifest.backup_id("prod", "db5", moment, "0123abcd")
    os.makedirs(disk / (live + ".partial"))
    _manifest.write_json_atomic(str(disk / (live + ".partial") / ".run.json"), _manifest.run_record(
        "0123abcd", live, "prod", UUID, None, _stores.this_host(), _proc.identity(), text))
    bare = _manifest.backup_id("prod", "db4", moment, "0123abcd") + ".partial"
    os.makedirs(disk / bare)

    src, _m = backup(tmp_path / "node", 0)
    args = dict(src=src, dest=dict(type="local", path=str(disk)), keep=1)
    would = run_module(args, check=True)
    assert not would.get("failed"), would
    assert would["removed"] == [os.path.basename(old)] and would["removed_partial"] == [dead + ".partial"]
    assert sorted(os.listdir(disk)) == sorted([os.path.basename(old), os.path.basename(theirs), os.path.basename(twin),
                                               "prod_logs", "prod_binlogs", east + ".partial", dead + ".partial", bare,
                                               live + ".partial"])

    done = run_module(args)
    assert not done.get("failed"), done
    assert done["removed"] == [os.path.basename(old)] and done["removed_partial"] == [dead + ".partial"]
    assert sorted(os.listdir(disk)) == sorted([os.path.basename(src), os.path.basename(theirs), os.path.basename(twin),
                                               "prod_logs", "prod_binlogs", east + ".partial", bare, live + ".partial"])
    assert done["in_flight"] == [live + ".partial"]
    text = "\n".join(done["problems"])
    assert bare in text and os.path.basename(twin) in text and "prod_east" not in text

    wrong = run_module(dict(args, cluster_uuid=OTHER_UUID))
    assert wrong["failed"] and "is not the state uuid of the backup" in wrong["msg"]


@pytest.mark.parametrize("args, fragment", [
    (dict(keep=0), "keep must be at least 1"),
    (dict(partial_margin=-1), "partial_margin must be at least 0"),
    (dict(dest=dict(type="ssh", host="x")), "missing: path"),
])
def test_copy_module_refuses_bad_options(tmp_path, args, fragment):
    src, _m = backup(tmp_path / "node", 0)
    result = run_module(dict(dict(src=src, dest=dict(type="local", path=str(tmp_path / "disk"))), **args))
    assert result["failed"] and fragment in result["msg"], result["msg"]
    assert not (tmp_path / "disk").exists()
