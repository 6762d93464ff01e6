# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Streamed backups (galera_backup_stream_to): the stores' writers and the streamed-backup steps of
the Store interface, for every store (a local directory, the SSH store played by this machine's sh,
S3 in moto); the runner's sink that hashes, MACs and tests the stream as it passes; the node-side
steps (pre-flight, finish) and the local record. Against the real sshd and moto's server:
tests/integration/test_streaming.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest
from moto import mock_aws

from ansible_collections.dbtools.galera.plugins.module_utils import (
    _backup_job,
    _backup_runner,
    _catalog,
    _crypto,
    _manifest,
    _proc,
    _restore,
    _retention,
    _stores,
    _tools,
)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError
from ansible_collections.dbtools.galera.plugins.module_utils._store_s3 import S3Store, base_part_size, part_size
from ansible_collections.dbtools.galera.plugins.module_utils._store_ssh import SshStore
from ansible_collections.dbtools.galera.plugins.modules import galera_backup_job

from stores_helpers import UUID, LocalRunner, Planted  # pylint: disable=import-error

RUN_ID = "5eed0123"
BID = f"c1_n1_20261201T000000Z-{RUN_ID}"
MIB = 1024 * 1024
HOSTILE = ["../x", "/etc/passwd", "a\nb", "manifest.json", ".run.json", "", "meta/../../x", "meta//x", "a\\b"]


class StreamRunner(LocalRunner):
    """LocalRunner that also plays ``ssh ... sh -c <script>`` for a stream (the script run by the local sh)."""

    def popen(self, argv, environ_update=None, **kwargs):
        assert argv[argv.index("--") + 1] == "store"
        self.calls.append(list(argv))
        return subprocess.Popen(["sh", "-c", argv[-1]], **kwargs)  # pylint: disable=consider-using-with


def record(run_id=RUN_ID, backup=BID, cluster="c1", process=None):
    return _manifest.run_record(run_id, backup, cluster, UUID, "owner", _stores.this_host(),
                                process or _proc.identity(), "2026-12-01T00:00:00Z")


@pytest.fixture(params=["local", "ssh", "s3"])
def planted(request, tmp_path, monkeypatch):
    root = str(tmp_path / "store dir $(x)")  # a path a shell would mangle
    if request.param == "local":
        yield Planted("local", _stores.LocalStore(root), root=root)
    elif request.param == "ssh":
        yield Planted("ssh", SshStore(StreamRunner(), dict(host="store", path=root)), root=root)
    else:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        with mock_aws():
            store = S3Store(dict(bucket="backups", prefix="galera", region="us-east-1", access_key="test",
                                 secret_key="test-secret"))
            store.client.create_bucket(Bucket="backups")
            store.stream_part_size = 5 * MIB  # S3's smallest part: a few MiB make a multipart upload
            yield Planted("s3", store, client=store.client, bucket="backups", prefix="galera/")


def local_record(tmp_path, data: bytes, rel="backup.xbstream.zst", name=None) -> _stores.LocalBackup:
    """The local record of a streamed backup (``<id>.partial`` with meta/, tables.json, backup.log,
    SHA256SUMS naming ``rel`` with the sha256 of ``data``, and the manifest), as finish has it."""
    partial = tmp_path / "backups" / ((name or BID) + ".partial")
    (partial / "meta").mkdir(parents=True)
    (partial / "meta" / "xtrabackup_checkpoints").write_text("backup_type = full-backuped\nto_lsn = 42\n")
    (partial / "tables.json").write_text('[["db", "t", 16384]]\n')
    (partial / "backup.log").write_text("[00] completed OK!\n")
    sums = {rel: hashlib.sha256(data).hexdigest()}
    for small in ("backup.log", "meta/xtrabackup_checkpoints", "tables.json"):
        sums[small] = _stores.sha256_file(str(partial / small))
    (partial / "SHA256SUMS").write_text("".join(f"{sums[r]}  ./{r}\n" for r in sorted(sums)))
    manifest = dict(format=1, id=name or BID, result="ok", type="full", parent=None, chain=[name or BID],
                    method="mariabackup", node="n1", wsrep_node_name="n1", cluster=dict(name="c1", state_uuid=UUID),
                    finished_at="2026-12-01T00:10:00Z", position=dict(cluster_uuid=UUID, seqno=7, to_lsn=42),
                    sha256=_stores.sha256_file(str(partial / "SHA256SUMS")),
                    streamed_to=dict(name="store", type="ssh", url="x", files=[rel]))
    (partial / "manifest.json").write_text(json.dumps(manifest))
    _manifest.write_json_atomic(str(partial / ".run.json"), record(backup=name or BID))
    return _stores.LocalBackup(str(partial), streamed=[rel], backup_id=name or BID)


def stream(store, data: bytes, rel="backup.xbstream.zst", backup=BID, block=MIB):
    writer = store.open_writer(backup, rel, size_hint=len(data))
    for start in range(0, len(data), block):
        writer.write(data[start:start + block])
    writer.close()


def s3_uploads(planted) -> list:
    return planted.client.list_multipart_uploads(Bucket=planted.bucket).get("Uploads", [])


# ---------------------------------------------------------------------------------------------
# The stores

@pytest.mark.parametrize("size", [0, 3000, 12 * MIB + 17])
def test_a_streamed_backup_is_verified_there_and_counts_only_once_published(planted, tmp_path, size):
    store = planted.store
    data = os.urandom(size)
    store.begin_stream(BID, record())
    stream(store, data)
    # Streamed, not yet published: a listing sees an unfinished copy with its run record, never a backup.
    listing = store.list()
    assert listing["manifests"] == {} and list(listing["partials"].values())[0]["run_id"] == RUN_ID
    local = local_record(tmp_path, data)
    store.publish_stream(local)
    listing = store.list()
    assert list(listing["manifests"]) == [BID] and listing["partials"] == {}
    there = planted.files(BID)
    assert there["backup.xbstream.zst"] == data
    assert set(there) == {"backup.xbstream.zst", "backup.log", "meta/xtrabackup_checkpoints", "tables.json",
                          "SHA256SUMS", "manifest.json"}  # no run record left
    assert json.loads(there["manifest.json"])["streamed_to"]["files"] == ["backup.xbstream.zst"]
    if planted.kind == "s3":
        assert s3_uploads(planted) == []
    # What the restore side does with it: fetched and checked file by file.
    fetched = store.fetch(BID, str(tmp_path / "fetched"))
    assert open(os.path.join(fetched["path"], "backup.xbstream.zst"), "rb").read() == data


def test_a_stream_cut_short_leaves_nothing_that_counts_and_no_upload(planted, tmp_path):
    store = planted.store
    store.begin_stream(BID, record())
    writer = store.open_writer(BID, "backup.xbstream.zst", size_hint=20 * MIB)
    writer.write(os.urandom(11 * MIB))  # two S3 parts sent
    writer.abort()
    listing = store.list()
    assert listing["manifests"] == {} and set(listing["partials"]) == {store.staging(BID)}
    if planted.kind == "s3":
        assert s3_uploads(planted) == [], "an aborted stream left its multipart upload"
    assert store.abort_stream(BID, RUN_ID) is True
    assert planted.names() == set()


def test_a_mismatch_at_the_destination_publishes_nothing(planted, tmp_path):
    store = planted.store
    data = os.urandom(70000)
    store.begin_stream(BID, record())
    stream(store, b"X" + data[1:])  # what arrived is not what the runner hashed
    with pytest.raises(GaleraError, match="does not match what was sent: backup.xbstream.zst"):
        store.publish_stream(local_record(tmp_path, data))
    listing = store.list()
    assert listing["manifests"] == {} and planted.names() == {store.staging(BID)}
    if planted.kind == "s3":  # in place: no manifest.json (directories: still named <id>.partial)
        assert "manifest.json" not in planted.files(store.staging(BID))
    assert store.abort_stream(BID, RUN_ID) is True and planted.names() == set()


def test_abort_stream_removes_only_its_own_run_and_never_a_backup(planted, tmp_path):
    store = planted.store
    store.begin_stream(BID, record(run_id="ffff0000"))
    assert store.abort_stream(BID, RUN_ID) is False  # another run's staging place: left alone
    assert store.staging(BID) in planted.names()
    store.abort_stream(BID, "ffff0000")
    # A published backup is never removed by an abort, even with the right run id.
    data = b"x" * 1000
    store.begin_stream(BID, record())
    stream(store, data)
    store.publish_stream(local_record(tmp_path, data))
    assert store.abort_stream(BID, RUN_ID) is False
    assert list(store.list()["manifests"]) == [BID]


@pytest.mark.parametrize("rel", HOSTILE)
def test_open_writer_refuses_what_is_not_a_data_file_of_a_backup(planted, rel):
    planted.store.begin_stream(BID, record())
    with pytest.raises(GaleraError, match="refused to stream"):
        planted.store.open_writer(BID, rel)


@pytest.mark.parametrize("rel", ["$(touch pwned)", "it's \"quoted\"", "`id`;x", "meta/ spaced  name"])
def test_a_name_a_shell_would_read_is_written_as_it_is(planted, tmp_path, rel):
    store = planted.store
    store.begin_stream(BID, record())
    stream(store, b"data", rel=rel)
    assert planted.files(store.staging(BID))[rel] == b"data"
    assert not os.path.exists("pwned") and not os.path.exists(os.path.join(str(tmp_path), "pwned"))


@pytest.mark.parametrize("backup", ["../c1_n1_20261201T000000Z", "c1_n1_20261201T000000Z-0a1b2c3d.partial", "x",
                                    "c1_n1_20261201T000000Z;rm -rf /"])
def test_begin_stream_refuses_what_is_no_backup_id(planted, backup):
    with pytest.raises(GaleraError):
        planted.store.begin_stream(backup, record(backup=backup))
    assert planted.names() == set()


def test_ssh_stream_into_a_vanished_staging_place_fails_naming_it(tmp_path):
    root = str(tmp_path / "store")
    store = SshStore(StreamRunner(), dict(host="store", path=root))
    store.begin_stream(BID, record())
    os.rename(os.path.join(root, BID + ".partial"), os.path.join(root, "elsewhere"))
    writer = store.open_writer(BID, "meta/x")
    with pytest.raises(GaleraError, match="staging directory .* is gone"):
        writer.write(b"x")
        writer.close()
    assert not os.path.exists(os.path.join(root, BID + ".partial")), "the writer recreated the staging place"


def test_ssh_stream_keeps_to_bwlimit(tmp_path):
    store = SshStore(StreamRunner(), dict(host="store", path=str(tmp_path / "store"), bwlimit=2000))
    store.begin_stream(BID, record())
    started = time.monotonic()
    stream(store, b"y" * (1000 * 1024), block=100 * 1024)  # 1000 KiB at 2000 KiB/s
    assert time.monotonic() - started >= 0.45


@pytest.mark.parametrize("number, base, expected", [
    (1, 16 * MIB, 16 * MIB), (1000, 16 * MIB, 16 * MIB), (1001, 16 * MIB, 32 * MIB), (3001, 16 * MIB, 128 * MIB),
    (10000, 16 * MIB, 5 * 1024 * MIB),
])
def test_s3_part_sizes_grow_so_10000_parts_hold_any_backup(number, base, expected):
    assert part_size(number, base) == expected


@pytest.mark.parametrize("hint, expected", [(None, 16 * MIB), (0, 16 * MIB), (10 * 1024 * MIB, 16 * MIB),
                                            (1024 * 1024 * MIB, 210 * MIB)])
def test_s3_first_part_size_follows_the_expected_size(hint, expected):
    assert base_part_size(hint) == expected
    # 10 000 parts of that schedule hold more than the hint.
    assert sum(part_size(n, base_part_size(hint)) for n in range(1, 10001)) > (hint or 0)


def test_s3_retention_aborts_the_upload_a_dead_stream_left(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        store = S3Store(dict(bucket="bkt", prefix="p/", region="us-east-1", access_key="t", secret_key="s"))
        store.client.create_bucket(Bucket="bkt")
        dead = dict(pid=999999, boot_id=_proc.boot_id(), start_ticks=1)
        store.begin_stream(BID, record(process=dead))
        other = "c1_n1_20261201T000000Z-77777777"  # another backup's upload in flight: never touched
        for backup in (BID, other):
            store.client.create_multipart_upload(Bucket="bkt", Key=f"p/{backup}/backup.xbstream.zst")
        planned = _retention.run(store, "c1", 1, False, state_uuid=UUID, margin=3600)
        assert planned["remove_partial"] == [BID]
        left = [u["Key"] for u in store.client.list_multipart_uploads(Bucket="bkt").get("Uploads", [])]
        assert left == [f"p/{other}/backup.xbstream.zst"]


# ---------------------------------------------------------------------------------------------
# The runner's sink: hashed, MAC-ed and tested as it passes

class FailingWriter:
    """A store's writer that fails after ``after`` bytes, as a dropped connection would."""

    def __init__(self, inner, after: int):
        self.inner, self.after, self.sent, self.aborted = inner, after, 0, False

    def write(self, data):
        self.sent += len(data)
        if self.sent > self.after:
            raise GaleraError("streaming backup.xbstream.zst: connection reset")
        self.inner.write(data)

    def close(self):
        self.inner.close()

    def abort(self):
        self.aborted = True
        self.inner.abort()


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


def sink_to(store, tmp_path, rel="backup.xbstream.zst", key_file=None, record_=None, mac=None, writer=None):
    check = _tools.Pipeline(_restore.check_stages(rel, key_file, record_), str(tmp_path / "log"),
                            stdin=subprocess.PIPE)
    return _backup_runner.Sink("url", mac, writer=writer or store.open_writer(BID, rel), check=check, rel=rel)


@pytest.fixture
def local_store(tmp_path):
    store = _stores.LocalStore(str(tmp_path / "store"))
    store.begin_stream(BID, record())
    return store


def test_the_sink_hashes_what_passes_and_commits_a_good_stream(local_store, tmp_path):
    data = zstd(os.urandom(300000))
    sink = sink_to(local_store, tmp_path)
    with open(tmp_path / "src", "wb") as handle:
        handle.write(data)
    with open(tmp_path / "src", "rb") as src:
        sink.drain(src)
    assert sink.sha.hexdigest() == hashlib.sha256(data).hexdigest() and sink.bytes == len(data)
    assert (tmp_path / "store" / (BID + ".partial") / "backup.xbstream.zst").read_bytes() == data


def test_the_sink_drops_a_stream_that_fails_its_test(local_store, tmp_path):
    sink = sink_to(local_store, tmp_path)
    with open(tmp_path / "src", "wb") as handle:
        handle.write(os.urandom(200000))  # not zstd
    with pytest.raises(GaleraError, match="testing backup.xbstream.zst as it was streamed"):
        with open(tmp_path / "src", "rb") as src:
            sink.drain(src)
    assert not (tmp_path / "store" / (BID + ".partial") / "backup.xbstream.zst").exists()


def test_a_writer_failing_mid_stream_aborts_and_leaves_no_backup(local_store, tmp_path):
    writer = FailingWriter(local_store.open_writer(BID, "backup.xbstream.zst"), after=2 * MIB)
    sink = sink_to(local_store, tmp_path, writer=writer)
    with open(tmp_path / "src", "wb") as handle:
        handle.write(zstd(os.urandom(4 * MIB)))
    with pytest.raises(GaleraError, match="connection reset"):
        with open(tmp_path / "src", "rb") as src:
            sink.drain(src)
    assert writer.aborted
    assert local_store.list()["manifests"] == {}
    assert local_store.abort_stream(BID, RUN_ID) and not os.listdir(tmp_path / "store")


def test_an_encrypted_stream_is_macced_as_it_passes_and_tested_with_its_key(local_store, tmp_path):
    key = b"unit-test-key"
    key_file = str(tmp_path / "key")
    _crypto.write_key_file(key_file, key)
    rel = "backup.xbstream.zst.enc"
    enc = _crypto.new_record(key, iterations=1)
    cipher = subprocess.run(_crypto.encrypt_argv("openssl", key_file), input=zstd(os.urandom(100000)),
                            capture_output=True, check=True).stdout
    sink = sink_to(local_store, tmp_path, rel=rel, key_file=key_file, record_=enc, mac=_crypto.Mac(key, enc, rel))
    with open(tmp_path / "src", "wb") as handle:
        handle.write(cipher)
    with open(tmp_path / "src", "rb") as src:
        sink.drain(src)
    _crypto.record_file_mac(enc, rel, sink.mac.hexdigest())
    _crypto.seal(enc, key)
    written = str(tmp_path / "store" / (BID + ".partial") / rel)
    assert _crypto.verify_file(written, rel, enc, key) == _crypto.VERIFIED


def runner_for(tmp_path, store, monkeypatch):
    """A Runner of a streamed run whose partial and destination are under ``tmp_path``."""
    partial = tmp_path / "backups" / (BID + ".partial")
    partial.mkdir(parents=True)
    run = dict(id=BID, run_id=RUN_ID, partial=str(partial), dir=str(tmp_path / "backups"),
               state_file=str(tmp_path / "state.json"), scratch=str(tmp_path / "scratch"), tool="mysqldump",
               cluster=dict(name="c1", state_uuid=UUID), stream=dict(name="store", type="ssh", url="ssh://store/x"),
               data_bytes=1000)
    settings = dict(nice=0, ionice_class="none", ionice_level=7, compress_level=1, threads=1, max_duration=60)
    runner = _backup_runner.Runner(run, settings, {}, None, None, str(tmp_path / "cnf"), None)
    runner.store = store
    runner.record = record()
    monkeypatch.setattr(runner, "_applied_priority", lambda pid: dict(nice=None, ionice=None))
    store.begin_stream(BID, runner.record)
    return runner


def test_the_runner_streams_and_lists_the_stream_in_sha256sums_from_what_passed(tmp_path, monkeypatch):
    store = _stores.LocalStore(str(tmp_path / "store"))
    runner = runner_for(tmp_path, store, monkeypatch)
    dump = b"-- MariaDB dump\n" + b"INSERT INTO t VALUES (1);\n" * 50000 + b"-- Dump completed on 2026\n"
    (tmp_path / "dump.sql").write_bytes(dump)
    facts = runner._stream(["cat", str(tmp_path / "dump.sql")], "dump", "dump.sql")
    assert facts["stream"]["file"] == "dump.sql.zst" and facts["tee"].result["bytes"] == len(dump)
    assert not os.path.exists(os.path.join(runner.partial, "dump.sql.zst")), "the data was written locally"
    there = tmp_path / "store" / (BID + ".partial") / "dump.sql.zst"
    assert subprocess.run(["zstd", "-dc", str(there)], capture_output=True, check=True).stdout == dump
    (tmp_path / "backups" / (BID + ".partial") / "tables.json").write_text("[]\n")
    sums = runner.checksum(None)
    listed = dict(reversed(line.split("  ./")) for line in
                  (tmp_path / "backups" / (BID + ".partial") / "SHA256SUMS").read_text().splitlines())
    assert listed["dump.sql.zst"] == hashlib.sha256(there.read_bytes()).hexdigest()
    assert set(listed) == {"dump.sql.zst", "tables.json", "backup.log"}
    assert sums["bytes"] >= there.stat().st_size


def test_a_tool_failing_mid_stream_leaves_nothing_at_the_destination(tmp_path, monkeypatch):
    store = _stores.LocalStore(str(tmp_path / "store"))
    runner = runner_for(tmp_path, store, monkeypatch)
    with pytest.raises(GaleraError, match="mysqldump"):
        runner._stream(["sh", "-c", "head -c 3000000 /dev/urandom; exit 2"], "dump", "dump.sql")
    runner.abort_stream()  # what main() does on any failure
    assert store.list() == dict(manifests={}, partials={}, other=[])


# ---------------------------------------------------------------------------------------------
# The node-side steps

def entry(**overrides):
    value = dict(name="store", type="ssh", host="store", path="/srv/backups", keep=2)
    value.update(overrides)
    return value


@pytest.mark.parametrize("settings, fragment", [
    (dict(stream_to="nope", copies=[entry()]), "must name exactly one entry .* names are: store"),
    (dict(stream_to="store", copies=[entry(), entry()]), "2 do"),
    (dict(stream_to="store", copies=[entry(type="local")]), "only to an ssh or s3 entry"),
    (dict(stream_to="$(reboot)", copies=[]), "names are: none"),
])
def test_stream_to_must_name_one_ssh_or_s3_entry(settings, fragment):
    with pytest.raises(GaleraError, match=fragment):
        _backup_runner.stream_entry(settings)


def test_no_stream_to_is_no_stream():
    assert _backup_runner.stream_entry(dict(stream_to="", copies=[entry()])) is None
    assert _backup_runner.open_stream(dict(copies=[entry()])) == (None, None)


@pytest.mark.parametrize("tool, changes, fragment", [
    ("mydumper", {}, "mariabackup, xtrabackup or mysqldump"),
    ("mariabackup", dict(compress="none"), "compress=zstd"),
    ("mariabackup", dict(verify="prepare"), "needs the backup on this node"),
    ("mysqldump", dict(verify="restore"), "needs the backup on this node"),
])
def test_preflight_refuses_what_a_stream_cannot_be(tool, changes, fragment):
    settings = dict(dict(compress="zstd", verify="checksum"), **changes)
    with pytest.raises(GaleraError, match=fragment):
        _backup_job.check_stream_settings(entry(), tool, settings)


UID, GID = os.getuid(), os.getgid()
OWNER = __import__("pwd").getpwuid(UID).pw_name
GROUP = __import__("grp").getgrgid(GID).gr_name


def settings_of(directory, **changes):
    """The module's defaults, as the role would pass them."""
    spec = galera_backup_job.BACKUP_SPEC
    value = {name: option.get("default") for name, option in spec.items()}
    value.update(dir=directory, file_owner=OWNER, file_group=GROUP, stream_to="store",
                 copies=[entry(keep=None, keep_tiers=None, max_age=None)])
    value.update(changes)
    return value


@pytest.fixture
def node(tmp_path, monkeypatch):
    """Pre-flight on this machine: the tools present, their login on node n1, the destination a LocalStore."""
    datadir = tmp_path / "datadir"
    datadir.mkdir()
    store = _stores.LocalStore(str(tmp_path / "store"))
    monkeypatch.setattr(_tools, "missing", lambda tools: [])
    monkeypatch.setattr(_backup_job, "tools_login", lambda login: dict(node_name="n1", log_bin=False))
    monkeypatch.setattr(_backup_runner, "open_stream", lambda s: (_backup_runner.stream_entry(s), store)
                        if s.get("stream_to") else (None, None))
    monkeypatch.setattr(_backup_job, "RUN_BASE", str(tmp_path / "run"))
    info = dict(server=dict(flavor="mariadb", datadir=str(datadir), data_bytes=50 * 1024 ** 3),
                cluster=dict(name="c1", state_uuid=UUID, size=3), node=dict(node_name="n1"),
                # gcache.dir's filesystem has room (galera_info reads it): only the backup directory is small here
                gcache=dict(dir=str(datadir), write_bytes_per_second=0, dir_free_bytes=1 << 40))
    return dict(store=store, info=info, dir=str(tmp_path / "backups"))


def preflight(node, **changes):
    return _backup_job.preflight(dict(backup=settings_of(node["dir"], **changes), node_info=node["info"], node="n1",
                                      owner="o"))


def published(directory, backup_id, streamed=False, to_lsn=42, when="2026-12-01T00:10:00Z", to="store"):
    """A complete backup directory ``directory/backup_id`` of node n1 (a streamed record: no data)."""
    path = os.path.join(directory, backup_id)
    os.makedirs(path)
    manifest = dict(format=1, id=backup_id, result="ok", type="full", parent=None, chain=[backup_id],
                    method="mariabackup", node="n1", wsrep_node_name="n1", cluster=dict(name="c1", state_uuid=UUID),
                    finished_at=when, position=dict(cluster_uuid=UUID, seqno=7, to_lsn=to_lsn), sha256="0" * 64)
    if streamed:
        manifest["streamed_to"] = dict(name=to, type="ssh", url="x", files=["backup.xbstream.zst"])
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def test_preflight_of_a_streamed_backup_needs_room_for_its_record_only(node, monkeypatch):
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 200 * 1024)  # a 256 KiB tmpfs
    run = preflight(node)
    assert run["stream"] == dict(name="store", type="ssh", url=node["store"].url(run["id"]))
    assert any("streams to store" in text for text in run["checks"])
    with pytest.raises(GaleraError, match="needs about 60.0 GiB"):
        preflight(node, stream_to="", copies=[])
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 60 * 1024)
    with pytest.raises(GaleraError, match="even a streamed backup keeps its local record .*about 64.0 KiB"):
        preflight(node)


def test_preflight_asks_for_twice_the_newest_record(node, monkeypatch):
    os.makedirs(node["dir"], mode=0o700)
    published(node["dir"], "c1_n1_20261130T000000Z-00000001", streamed=True)
    with open(os.path.join(node["dir"], "c1_n1_20261130T000000Z-00000001", "backup.log"), "wb") as handle:
        handle.write(b"[01] Streaming ./db/t.ibd\n" * 20000)  # a server with many tables: a long log
    record = os.path.join(node["dir"], "c1_n1_20261130T000000Z-00000001")
    used = sum(os.lstat(os.path.join(top, n)).st_blocks * 512 for top, dirs, files in os.walk(record)
               for n in dirs + files)
    assert used > 64 * 1024
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 2 * used - 4096)
    with pytest.raises(GaleraError, match="even a streamed backup keeps its local record"):
        preflight(node)
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 2 * used + 4096)
    assert preflight(node)["stream"]["name"] == "store"


def test_preflight_says_the_other_copies_are_not_made(node, monkeypatch):
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 1 << 30)
    run = preflight(node, copies=[entry(keep=None, keep_tiers=None, max_age=None), entry(name="s3", type="s3")])
    assert any("other entries (s3) are not copied to" in text for text in run["checks"])


def test_a_streamed_incremental_builds_on_the_newest_backup_at_the_destination(node, monkeypatch):
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 1 << 30)
    os.makedirs(node["dir"], mode=0o700)
    at_store = "c1_n1_20261130T000000Z-00000001"
    published(node["store"].path, at_store, to_lsn=4711, when="2026-11-30T00:10:00Z")
    published(node["dir"], "c1_n1_20261201T000000Z-00000002", to_lsn=9999)  # newer, but here only
    run = preflight(node, type="incremental")
    assert run["type"] == "incremental" and run["parent"] == at_store and run["incremental_lsn"] == 4711


def test_a_local_incremental_never_builds_on_a_streamed_record(node, monkeypatch):
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 1 << 40)
    os.makedirs(node["dir"], mode=0o700)
    local_full = "c1_n1_20261130T000000Z-00000001"
    published(node["dir"], local_full, to_lsn=4711, when="2026-11-30T00:10:00Z")
    published(node["dir"], "c1_n1_20261201T000000Z-00000002", streamed=True, to_lsn=9999)
    run = preflight(node, type="incremental", stream_to="", copies=[])
    assert run["parent"] == local_full and "stream" not in run


def test_preflight_refuses_a_destination_that_does_not_answer(node, monkeypatch):
    def unreachable(s):
        raise GaleraError("cannot reach store (port 22) over SSH (connection refused): check that the host is up. "
                          + _stores.UNTOUCHED)
    monkeypatch.setattr(_backup_runner, "open_stream", unreachable)
    with pytest.raises(GaleraError, match="galera_backup_stream_to=store: cannot reach .*Nothing was changed"):
        preflight(node)


# finish: publish there first, then the record here; or discard both

@pytest.fixture
def streamed_run(tmp_path, monkeypatch, node):
    monkeypatch.setattr(_backup_job._paths, "free_bytes", lambda path: 1 << 30)
    os.makedirs(node["dir"], mode=0o700)
    run = preflight(node)
    os.makedirs(run["run_dir"], mode=0o700)
    os.makedirs(run["partial"], mode=0o700)
    data = zstd(os.urandom(50000))
    store = node["store"]
    store.begin_stream(run["id"], record(run_id=run["run_id"], backup=run["id"]))
    stream(store, data, backup=run["id"])
    partial = run["partial"]
    os.makedirs(os.path.join(partial, "meta"))
    for rel, text in (("tables.json", "[]\n"), ("backup.log", "[00] completed OK!\n"),
                      ("meta/xtrabackup_checkpoints", "to_lsn = 42\n")):
        with open(os.path.join(partial, rel), "w", encoding="utf-8") as handle:
            handle.write(text)
    _manifest.write_json_atomic(os.path.join(partial, _manifest.RUN_RECORD),
                                record(run_id=run["run_id"], backup=run["id"]))
    sums = {"backup.xbstream.zst": hashlib.sha256(data).hexdigest()}
    for rel in ("tables.json", "backup.log", "meta/xtrabackup_checkpoints"):
        sums[rel] = _stores.sha256_file(os.path.join(partial, rel))
    with open(os.path.join(partial, "SHA256SUMS"), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{sums[r]}  ./{r}\n" for r in sorted(sums)))
    out = dict(tool="mariabackup", tables=0, tool_seconds=1.0, galera_info=f"{UUID}:7", to_lsn=42, from_lsn=0,
               stream=dict(file="backup.xbstream.zst", bytes=len(data), sha256=sums["backup.xbstream.zst"]),
               checksum=dict(files=4, bytes=len(data) + 100, sha256=_stores.sha256_file(
                   os.path.join(partial, "SHA256SUMS"))), verify=dict(level="checksum", result="ok"))
    _manifest.write_json_atomic(run["state_file"], dict(run_id=run["run_id"], id=run["id"], done=True, result="ok",
                                                        out=out, process=dict(pid=999999, boot_id=_proc.boot_id())))
    return dict(run=run, store=store, settings=settings_of(node["dir"]), data=data)


def finish(streamed_run, **extra):
    return _backup_job.finish(dict(dict(run=streamed_run["run"], backup=streamed_run["settings"]), **extra))


def test_finish_publishes_there_first_then_the_local_record(streamed_run):
    run, store = streamed_run["run"], streamed_run["store"]
    out = finish(streamed_run)
    assert out["published"] == run["final"] and out["manifest"]["streamed_to"]["name"] == "store"
    there = os.path.join(store.path, run["id"])
    assert open(os.path.join(there, "backup.xbstream.zst"), "rb").read() == streamed_run["data"]
    assert open(os.path.join(there, "manifest.json"), "rb").read() == \
        open(os.path.join(run["final"], "manifest.json"), "rb").read()
    # The local record: everything but the data; the catalogue and freshness count it.
    assert sorted(os.listdir(run["final"])) == ["SHA256SUMS", "backup.log", "manifest.json", "meta", "tables.json"]
    catalogue = _catalog.read_dir(run["dir"])
    assert [b["id"] for b in catalogue["backups"]] == [run["id"]] and catalogue["problems"] == []
    verdict = _catalog.freshness(_catalog.summarize(catalogue["backups"]), [], max_age=3600)
    assert verdict["summary"].startswith("OK") and verdict["newest"]["c1"]["restorable"]
    # It is no source for a copy: its data is not here.
    with pytest.raises(GaleraError, match="incomplete: backup.xbstream.zst"):
        _stores.LocalBackup(run["final"])
    assert out["stream_retention"]["kept"] == [run["id"]]


def test_finish_discards_a_stream_that_does_not_verify_there_and_records_it(streamed_run):
    run, store = streamed_run["run"], streamed_run["store"]
    with open(os.path.join(store.path, run["id"] + ".partial", "backup.xbstream.zst"), "r+b") as handle:
        handle.write(b"Z")
    with pytest.raises(GaleraError, match="was not published at store .*does not match what was sent") as caught:
        finish(streamed_run)
    assert caught.value.get("stream_discarded") is True
    assert os.listdir(store.path) == [], "the staging place stayed at the destination"
    assert sorted(os.listdir(run["dir"])) == [run["id"] + ".failed.json"]
    failure = json.load(open(run["failed"], encoding="utf-8"))
    assert failure["result"] == "failed" and "does not match" in failure["error"]


def test_finish_of_a_failed_streamed_run_removes_its_staging_place_there(streamed_run):
    run, store = streamed_run["run"], streamed_run["store"]
    out = finish(streamed_run, failure="Wait for the backup run: mariabackup exited with 1")
    assert out["stream_discarded"] is True and os.listdir(store.path) == []
    assert out["discarded"] == run["partial"] and out["failure_record"] == run["failed"]


def test_retention_there_takes_the_local_records_of_what_it_removed_along(streamed_run):
    run, store = streamed_run["run"], streamed_run["store"]
    old, elsewhere, local = ("c1_n1_20261120T000000Z-0000000" + c for c in "123")
    published(store.path, old, when="2026-11-20T00:10:00Z")
    published(run["dir"], old, streamed=True, when="2026-11-20T00:10:00Z")
    published(run["dir"], elsewhere, streamed=True, when="2026-11-20T00:10:00Z", to="s3")  # another store's
    published(run["dir"], local, when="2026-11-20T00:10:00Z")  # written here
    streamed_run["settings"]["copies"][0]["keep"] = 1
    out = finish(streamed_run)
    assert out["stream_retention"]["removed"] == [old] and out["stream_retention"]["removed_records"] == [old]
    assert sorted(os.listdir(store.path)) == [run["id"]]
    assert sorted(os.listdir(run["dir"])) == sorted([run["id"], elsewhere, local])


def test_start_refuses_settings_that_changed_since_preflight(streamed_run):
    run = streamed_run["run"]
    with pytest.raises(GaleraError, match="prepared with galera_backup_stream_to='store'"):
        _backup_job.start(dict(run=run, backup=dict(streamed_run["settings"], stream_to="")))
