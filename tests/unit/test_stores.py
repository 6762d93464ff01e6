# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The store interface, the same tests for every store: a local directory, the SSH store (its
remote scripts run by this machine's sh) and the S3 store (moto in process). Against real stores:
tests/integration."""

from __future__ import annotations

import json
import os
import shlex

import pytest
from moto import mock_aws

from ansible_collections.dbtools.galera.plugins.module_utils import _manifest, _stores
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError
from ansible_collections.dbtools.galera.plugins.module_utils._store_s3 import S3Store
from ansible_collections.dbtools.galera.plugins.module_utils._store_ssh import SshStore, parse_listing

from stores_helpers import LocalRunner, Planted, make_backup  # pylint: disable=import-error

BID = "c1_n1_20261125T030000Z-0a1b2c3d"


@pytest.fixture(params=["local", "ssh", "s3"])
def planted(request, tmp_path, monkeypatch):
    root = str(tmp_path / "store")
    if request.param == "local":
        yield Planted("local", _stores.LocalStore(root), root=root)
    elif request.param == "ssh":
        runner = LocalRunner()
        store = SshStore(runner, dict(host="store", path=root))
        store.runner_log = runner
        yield Planted("ssh", store, root=root)
    else:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        with mock_aws():
            store = S3Store(dict(bucket="backups", prefix="galera", region="us-east-1", access_key="test",
                                 secret_key="test-secret"))
            store.client.create_bucket(Bucket="backups")
            yield Planted("s3", store, client=store.client, bucket="backups", prefix="galera/")


@pytest.fixture
def local(tmp_path):
    directory, _manifest_dict = make_backup(tmp_path / "src", BID)
    return _stores.LocalBackup(directory)


def test_put_verifies_marks_itself_and_is_complete(planted, local):
    store = planted.store
    assert store.inspect(local) is None
    store.put(local)
    assert planted.names() == {BID}
    copied = planted.files(BID)
    assert set(copied) == set(local.files)  # the run record is gone once the copy is complete
    assert all(_stores.sha256_bytes(copied[rel]) == local.expected_sha(rel) for rel in local.files)
    assert store.inspect(local) == dict(manifest=local.manifest, bad=[], extra=[])
    assert store.list() == dict(manifests={BID: local.manifest}, partials={}, other=[])


def test_put_writes_the_run_record_first(planted, local):
    """Interrupted right after the data went over: the unfinished copy carries the run record."""
    store = planted.store
    record = _stores.new_copy_record(local, owner="test")

    def interrupted(*_args):
        raise GaleraError("interrupted")
    store._publish = interrupted
    with pytest.raises(GaleraError, match="interrupted"):
        store.put(local, None, record)
    listing = store.list()
    assert listing["manifests"] == {}
    (name, found), = listing["partials"].items()
    assert store.partial_id(name) == BID
    assert found == record and found["cluster"] == dict(name="c1", state_uuid=local.state_uuid)
    assert found["host"] == _stores.this_host() and found["process"]["pid"] == os.getpid()


def test_a_damaged_copy_is_repaired(planted, local):
    store = planted.store
    store.put(local)
    planted.damage(BID, "meta/checkpoints")
    planted.plant(BID, {"junk": b"not ours"})
    state = store.inspect(local)
    assert state["bad"] == ["meta/checkpoints"] and state["extra"] == ["junk"]
    store.put(local, state["bad"])
    assert store.inspect(local) == dict(manifest=local.manifest, bad=[], extra=[])
    assert set(planted.files(BID)) == set(local.files)


def test_a_damaged_local_file_fails_naming_it(planted, local):
    with open(os.path.join(local.path, "backup.xbstream.zst"), "r+b") as handle:
        handle.write(b"XX")
    with pytest.raises(GaleraError, match="LOCAL backup .* is damaged: backup.xbstream.zst") as caught:
        planted.store.put(local)
    assert caught.value.get("local_damaged") == ["backup.xbstream.zst"]
    assert planted.store.list()["manifests"] == {}


def test_fetch_verifies_every_file_on_arrival(planted, local, tmp_path):
    store = planted.store
    store.put(local)
    got = store.fetch(BID, str(tmp_path / "restore"))
    assert got["path"] == str(tmp_path / "restore" / BID) and got["files"] == 4
    assert got["manifest"]["id"] == BID
    assert sorted(os.listdir(got["path"])) == ["SHA256SUMS", "backup.xbstream.zst", "manifest.json", "meta"]
    with pytest.raises(GaleraError, match="already exists"):
        store.fetch(BID, str(tmp_path / "restore"))

    planted.damage(BID, "backup.xbstream.zst")
    with pytest.raises(GaleraError, match="does not match its SHA256SUMS: backup.xbstream.zst"):
        store.fetch(BID, str(tmp_path / "again"))
    assert os.listdir(tmp_path / "again") == []  # its own unfinished directory removed

    planted.damage(BID, "SHA256SUMS")
    with pytest.raises(GaleraError, match="is not the one its manifest names"):
        store.fetch(BID, str(tmp_path / "again"))
    with pytest.raises(GaleraError, match="not a backup id"):
        store.fetch("../etc", str(tmp_path / "again"))
    with pytest.raises(GaleraError, match="has no manifest.json"):
        store.fetch("c1_n1_20261101T030000Z", str(tmp_path / "again"))


HOSTILE = ["prod_logs", "prod_binlogs", "a\nb", "..x", "@@e d bm - -", "it's $(touch pwned)", "-rf"]


def test_list_has_one_shape_and_no_name_changes_the_answer(planted, local):
    store = planted.store
    store.put(local)
    for name in HOSTILE:
        planted.plant(name, {"x": b"1", "manifest.json": b"{}"} if name == "prod_logs" else {"x": b"1"})
    planted.plant("notes.txt", b"hello")
    in_flight = "c1_n2_20261124T030000Z"
    record = _manifest.run_record("0123abcd", in_flight, "c1", None, None, "h", {}, "2026-11-24T03:00:00Z")
    if planted.kind == "s3":
        planted.plant(in_flight, {"backup.xbstream.zst": b"half", ".run.json": json.dumps(record).encode()})
        planted.plant("c1_n3_20261124T030000Z", {"backup.xbstream.zst": b"half"})
        partials = {in_flight: record, "c1_n3_20261124T030000Z": None}
    else:
        planted.plant(in_flight + ".partial", {".run.json": json.dumps(record).encode()})
        planted.plant("c1_n3_20261124T030000Z.partial", {".run.json": b"{not json"})
        planted.plant("c1_n4_20261124T030000Z", {"backup.xbstream.zst": b"deletion cut short"})
        partials = {in_flight + ".partial": record, "c1_n3_20261124T030000Z.partial": None}
    listing = store.list()
    assert listing["manifests"] == {BID: local.manifest, "prod_logs": {}}
    assert listing["partials"] == partials
    expected_other = set(HOSTILE) - {"prod_logs"} | {"notes.txt"}
    if planted.kind != "s3":
        expected_other.add("c1_n4_20261124T030000Z")
    assert set(listing["other"]) == expected_other
    assert not os.path.exists("pwned")


def test_delete_removes_the_manifest_first_and_refuses_what_is_no_id(planted, local):
    store = planted.store
    store.put(local)
    planted.plant("prod_logs", {"x": b"1"})
    for bad in ("prod_logs", "../x", "c1_n1_20261125T030000Z.partial", "a/b", ""):
        with pytest.raises(GaleraError, match="refused to delete"):
            store.delete([bad])
    with pytest.raises(GaleraError, match="not the name of an unfinished copy"):
        store.delete_partials(["prod_logs"])
    assert planted.names() == {BID, "prod_logs"}

    removed = []
    original = store._remove

    def watch(name):
        removed.append(planted.files(name).get("manifest.json"))
        original(name)
    store._remove = watch
    store.delete([BID])
    assert planted.names() == {"prod_logs"}
    assert removed == [local.manifest_bytes]


def test_a_deletion_cut_short_leaves_no_backup(planted, local):
    store = planted.store
    store.put(local)
    planted.remove_file(BID, "manifest.json")  # what a deletion stopped after its first step leaves
    assert BID not in store.list()["manifests"]


def test_delete_partials_leaves_a_copy_that_finished_meanwhile(planted, local):
    store = planted.store
    store.put(local)
    name = store.staging(BID)
    store.delete_partials([name])
    if planted.kind == "s3":
        assert planted.names() == {BID}  # it has its manifest now: a backup, not a leftover
    else:
        assert planted.names() == {BID}  # <id>.partial no longer exists: nothing to do


# ---------------------------------------------------------------------------------------------
# SSH specifics

def ssh_store(tmp_path, **opts):
    runner = LocalRunner()
    return SshStore(runner, dict(dict(host="store", path=str(tmp_path / "store")), **opts)), runner


@pytest.mark.parametrize("opts, fragment", [
    (dict(host="-oProxyCommand=x"), "not a valid SSH host"),
    (dict(host="a b"), "not a valid SSH host"),
    (dict(user="root@evil"), "not a valid SSH user"),
    (dict(path=""), "must name the remote directory"),
    (dict(path="/"), "must name the remote directory"),
    (dict(path="/srv/a\nb"), "must name the remote directory"),
    (dict(port=0), "not a TCP port"),
    (dict(bwlimit=-1), "must not be negative"),
    (dict(known_hosts_file='/x"y'), "double quote"),
    (dict(identity_file="/nonexistent/key"), "does not exist on this host"),
])
def test_ssh_store_refuses_bad_options(tmp_path, opts, fragment):
    with pytest.raises(GaleraError, match=fragment):
        ssh_store(tmp_path, **opts)


def test_ssh_remote_commands_quote_every_value(tmp_path, local):
    path = str(tmp_path / "it's $(touch pwned) `x`")
    store, runner = ssh_store(tmp_path, path=path)
    store.put(local)
    assert os.path.isdir(os.path.join(path, BID))
    assert store.list()["manifests"] == {BID: local.manifest}
    store.delete([BID])
    assert os.listdir(path) == []
    assert not os.path.exists("pwned") and not os.path.exists(os.path.join(str(tmp_path), "pwned"))
    for argv in runner.calls:
        if argv[0].endswith("ssh"):
            assert argv[-1].startswith("LC_ALL=C sh -c ") and shlex.split(argv[-1])[:4] == ["LC_ALL=C", "sh", "-c",
                                                                                            shlex.split(argv[-1])[3]]


def test_ssh_rsync_protects_the_run_record_and_leaves_unlisted_files_out(tmp_path, local):
    with open(os.path.join(local.path, "stray.log"), "w", encoding="utf-8") as handle:
        handle.write("not listed")
    local = _stores.LocalBackup(local.path)
    store, runner = ssh_store(tmp_path, bwlimit=100)
    store.put(local)
    rsync = [argv for argv in runner.calls if argv[0].endswith("rsync")][0]
    assert "--filter=P /.run.json" in rsync and "--exclude=/.run.json" in rsync
    assert "--exclude=/stray.log" in rsync and "--bwlimit=100" in rsync
    assert rsync.index("--filter=P /.run.json") < rsync.index("--exclude=/.run.json")
    assert rsync[-1] == f"store:{store.remote(BID + '.partial')}/"
    assert "stray.log" not in os.listdir(os.path.join(str(tmp_path / "store"), BID))


@pytest.mark.parametrize("stderr, fragment", [
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", "has CHANGED"),
    ("Host key verification failed.", "is unknown"),
    ("root@store: Permission denied (publickey).", "refused the login"),
    ("ssh: Could not resolve hostname store: Name or service not known", "cannot resolve"),
    ("ssh: connect to host store port 22: Connection refused", "cannot reach"),
])
def test_ssh_failures_are_classified_with_their_fix(tmp_path, stderr, fragment):
    store, runner = ssh_store(tmp_path)
    runner.fail = (255, stderr)
    with pytest.raises(GaleraError, match=fragment) as caught:
        store.list()
    assert "Nothing was changed" in caught.value.msg


def test_ssh_listing_parser_rejects_a_forged_line():
    with pytest.raises(ValueError):
        parse_listing("@@e d notbase64 - -\n@@end\n")
    assert parse_listing("@@e o bYQo= - -\n") == [dict(name="a\n", dir=False, manifest=None, record=None)]


# ---------------------------------------------------------------------------------------------
# S3 specifics

def test_s3_store_needs_both_keys_and_a_bucket():
    with pytest.raises(GaleraError, match="together"):
        S3Store(dict(bucket="b", access_key="a"))
    with pytest.raises(GaleraError, match="bucket is required"):
        S3Store(dict(bucket=""))


def test_s3_errors_name_the_fix(tmp_path, local, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        store = S3Store(dict(bucket="missing", region="us-east-1", access_key="a", secret_key="b"))
        with pytest.raises(GaleraError, match="bucket missing does not exist; create it or fix dest.bucket"):
            store.put(local)


def test_s3_storage_class_goes_on_data_not_on_the_run_record(local, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        store = S3Store(dict(bucket="classes", region="us-east-1", access_key="a", secret_key="b",
                             storage_class="STANDARD_IA"))
        store.client.create_bucket(Bucket="classes")
        store._publish = lambda _local: None  # stop before the record is removed
        store.put(local)
        head = store.client.head_object(Bucket="classes", Key=f"{BID}/backup.xbstream.zst")
        assert head.get("StorageClass") == "STANDARD_IA"
        record = store.client.head_object(Bucket="classes", Key=f"{BID}/.run.json")
        assert record.get("StorageClass", "STANDARD") == "STANDARD"


# ---------------------------------------------------------------------------------------------
# The local store's own guards

def test_local_store_never_follows_links_or_leaves_its_directory(tmp_path, local):
    root = tmp_path / "store"
    store = _stores.LocalStore(str(root))
    store.put(local)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    os.symlink(str(outside), str(root / "c1_n9_20261101T030000Z"))
    assert "c1_n9_20261101T030000Z" in store.list()["other"]
    with pytest.raises(GaleraError, match="not a directory"):
        store.delete(["c1_n9_20261101T030000Z"])
    assert (outside / "keep").read_text() == "precious"
    with pytest.raises(GaleraError):
        store.source("../outside")
    assert store.source(BID).id == BID
