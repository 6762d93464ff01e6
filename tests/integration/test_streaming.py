# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Streamed backups (galera_backup_stream_to) against real stores: the sshd container and moto's S3
server of tests/integration/conftest.py.

A probe module (written below, run on the lab's node through ansible-playbook like the collection's
modules) drives the runner's own stream path: a real ``mbstream -c`` produces an xbstream, the
runner's Tee reads its metadata, zstd compresses it, and the Sink sends it to the store's writer
(SSH ``cat >`` into ``<id>.partial/``, S3 a multipart upload), hashing and testing it as it passes.
Then the local record (meta/, tables.json, backup.log, SHA256SUMS, manifest) is published there:
every file verified at the destination, ``manifest.json`` last. Checked from the store's side: the
files, ``sha256sum -c`` on the SSH host, the objects read back from S3, and an extraction of the
stream with ``mbstream -x``. Aborted mid-way (the run told to stop, as the role's abort step does;
or killed, as a crash would) the listing never shows a backup; the stopped run removes its staging
place and aborts its multipart upload itself, the killed one's is removed by retention there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
CLUSTER = "streamtest"
MIB = 1024 * 1024

PROBE = r'''#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test probe (tests/integration/test_streaming.py): the runner's stream path on a real node."""
import os
import shutil
import signal
import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dbtools.galera.plugins.module_utils import (
    _backup_runner, _copy, _manifest, _proc, _restore, _restore_job, _retention, _stores, _tools)
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

SRC = "/var/tmp/dbtools-stream-src"
WORK = "/var/tmp/dbtools-stream-work"
CLUSTER, UUID = "streamtest", "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"
MIB = 1024 * 1024


def source(mib):
    """An xtrabackup_checkpoints and an ibdata1 of ``mib`` MiB of random data (incompressible)."""
    os.makedirs(SRC, exist_ok=True)
    data = os.path.join(SRC, "ibdata1")
    if not os.path.exists(data) or os.path.getsize(data) != mib * MIB:
        with open(data, "wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(MIB))
    with open(os.path.join(SRC, "xtrabackup_checkpoints"), "w") as handle:
        handle.write("backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 4711\n")
    return _stores.sha256_file(data)


def runner_of(store, backup_id, run_id, mib):
    partial = os.path.join(WORK, backup_id + ".partial")
    os.makedirs(partial)
    record = _manifest.run_record(run_id, backup_id, CLUSTER, UUID, "probe", _stores.this_host(), _proc.identity(),
                                  _backup_runner.utc_text())
    _manifest.write_json_atomic(os.path.join(partial, _manifest.RUN_RECORD), record)
    run = dict(id=backup_id, run_id=run_id, partial=partial, dir=WORK, scratch=os.path.join(WORK, run_id + ".scratch"),
               state_file=os.path.join(WORK, run_id + ".state.json"), tool="mariabackup",
               cluster=dict(name=CLUSTER, state_uuid=UUID), data_bytes=mib * MIB,
               stream=dict(name="dest", type=store.kind, url=store.url(backup_id)))
    settings = dict(nice=10, ionice_class="best-effort", ionice_level=7, compress_level=1, threads=2, max_duration=600)
    runner = _backup_runner.Runner(run, settings, {}, None, None, os.path.join(WORK, "none.cnf"), None)
    runner.store, runner.record = store, record
    store.begin_stream(backup_id, record)
    return runner


def tool():
    return ["sh", "-c", 'cd "$1" && exec "$2" -c xtrabackup_checkpoints ibdata1', "sh", SRC, _tools.find("extract")]


def stream_and_publish(store, runner):
    facts = runner._stream(tool(), "xbstream", "backup.xbstream")
    partial = runner.partial
    os.makedirs(os.path.join(partial, "meta"))
    for name, data in facts["tee"].result["files"].items():
        with open(os.path.join(partial, "meta", name), "wb") as handle:
            handle.write(data)
    _manifest.write_json_atomic(os.path.join(partial, "tables.json"), [])
    sums = runner.checksum(None)
    manifest = dict(format=1, id=runner.run["id"], run_id=runner.run["run_id"], result="ok", type="full",
                    parent=None, chain=[runner.run["id"]], method="mariabackup", node="probe",
                    wsrep_node_name="probe", cluster=dict(name=CLUSTER, state_uuid=UUID),
                    finished_at=_backup_runner.utc_text(), position=dict(cluster_uuid=UUID, seqno=1, to_lsn=4711),
                    bytes=sums["bytes"], files=sums["files"], sha256=sums["sha256"], sha256_of="SHA256SUMS",
                    streamed_to=dict(name="dest", type=store.kind, url=runner.run["stream"]["url"],
                                     files=[facts["stream"]["file"]]))
    _manifest.write_json_atomic(os.path.join(partial, _manifest.MANIFEST), manifest)
    store.publish_stream(_stores.LocalBackup(partial, streamed=[facts["stream"]["file"]], backup_id=runner.run["id"]))
    return dict(stream=dict((k, v) for k, v in facts["stream"].items()), meta=sorted(facts["tee"].result["files"]),
                local=sorted(os.listdir(partial)), sums=sums)


def listing(store):
    found = store.list()
    return dict(manifests=sorted(found["manifests"]), partials={k: (v or {}).get("run_id")
                                                                for k, v in found["partials"].items()},
                other=found["other"])


def uploads(store, backup_id):
    if store.kind != "s3":
        return []
    answer = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.key(backup_id))
    return [u["Key"] for u in answer.get("Uploads", []) or []]


def sent(runner):
    return sum(sink.bytes for sink in runner.sinks)


def main():
    spec = dict(action=dict(type="str", required=True, choices=["stream", "stop", "kill", "fetch", "cleanup"]),
                dest=_restore_job.source_spec(), backup_id=dict(type="str"), run_id=dict(type="str"),
                mib=dict(type="int", default=40), after_mib=dict(type="int", default=20))
    module = AnsibleModule(argument_spec=spec)
    p = module.params
    if p["action"] == "cleanup":
        shutil.rmtree(WORK, ignore_errors=True)
        shutil.rmtree(SRC, ignore_errors=True)
        module.exit_json(changed=True)
    store = _copy.open_store(_stores.CommandRunner(), p["dest"])
    os.makedirs(WORK, exist_ok=True)
    out = dict(changed=True, url=store.url(p["backup_id"]))
    try:
        if p["action"] == "fetch":
            target = os.path.join(WORK, "fetched")
            shutil.rmtree(target, ignore_errors=True)
            fetched = store.fetch(p["backup_id"], target)
            extracted = os.path.join(WORK, "extracted")
            shutil.rmtree(extracted, ignore_errors=True)
            os.makedirs(extracted)
            stages = _restore.decode_stages(os.path.join(fetched["path"], "backup.xbstream.zst"), None) + [
                [_tools.find("extract"), "-x", "-C", extracted]]
            _tools.Pipeline(stages, os.path.join(WORK, "extract.log"),
                            stdin=os.path.join(fetched["path"], "backup.xbstream.zst")).wait("extracting")
            out.update(files=fetched["files"], ibdata1=_stores.sha256_file(os.path.join(extracted, "ibdata1")),
                       checkpoints=open(os.path.join(extracted, "xtrabackup_checkpoints")).read())
        elif p["action"] == "stream":
            out["source"] = source(p["mib"])
            runner = runner_of(store, p["backup_id"], p["run_id"], p["mib"])
            out.update(stream_and_publish(store, runner))
            out.update(listing=listing(store), uploads=uploads(store, p["backup_id"]))
        elif p["action"] == "stop":
            source(p["mib"])
            runner = runner_of(store, p["backup_id"], p["run_id"], p["mib"])

            def stop_midway():
                while sent(runner) < p["after_mib"] * MIB:
                    time.sleep(0.02)
                runner.stop("the run was stopped (SIGTERM) by the test")
            threading.Thread(target=stop_midway, daemon=True).start()
            try:
                stream_and_publish(store, runner)
                out["error"] = None
            except Exception as exc:  # what the runner's main() catches
                out["error"] = getattr(exc, "msg", str(exc))
            out.update(stopping=runner.stopping, sent=sent(runner), before=listing(store), uploads_before=uploads(store, p["backup_id"]))
            runner.abort_stream()  # what main() does with any failure
            out.update(after=listing(store), uploads_after=uploads(store, p["backup_id"]))
        elif p["action"] == "kill":
            source(p["mib"])
            progress = os.path.join(WORK, p["run_id"] + ".sent")
            if os.path.exists(progress):  # an earlier kill's count must not stop this one before it starts
                os.remove(progress)
            child = os.fork()
            if child == 0:
                try:
                    os.setpgid(0, 0)
                    # A store of its own: a connection inherited from the parent and cut by the kill must
                    # not answer the parent's listing afterwards.
                    runner = runner_of(_copy.open_store(_stores.CommandRunner(), p["dest"]), p["backup_id"],
                                       p["run_id"], p["mib"])

                    def report():
                        while True:
                            with open(progress + ".tmp", "w") as handle:
                                handle.write(str(sent(runner)))
                            os.rename(progress + ".tmp", progress)
                            time.sleep(0.02)
                    threading.Thread(target=report, daemon=True).start()
                    stream_and_publish(store, runner)
                finally:
                    os._exit(0)
            deadline = time.monotonic() + 300
            seen = 0
            while seen < p["after_mib"] * MIB and time.monotonic() < deadline:
                try:
                    seen = int(open(progress).read() or 0)
                except (OSError, ValueError):
                    pass
                time.sleep(0.02)
            os.killpg(child, signal.SIGKILL)
            os.waitpid(child, 0)
            out.update(sent=seen, before=listing(store), uploads_before=uploads(store, p["backup_id"]))
            planned = _retention.run(store, CLUSTER, 1, False, state_uuid=UUID, margin=3600)
            out.update(swept=planned["remove_partial"], after=listing(store),
                       uploads_after=uploads(store, p["backup_id"]))
    except GaleraError as exc:
        module.fail_json(msg=exc.msg, **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
'''


def probe(lab, **args) -> dict:
    """Run the probe module on the lab's node with ``args``; its result."""
    lab.runs += 1
    library = os.path.join(lab.workdir, "library")
    os.makedirs(library, exist_ok=True)
    with open(os.path.join(library, "galera_stream_probe.py"), "w", encoding="utf-8") as handle:
        handle.write(PROBE)
    play = [{"name": "stream probe", "hosts": "node", "gather_facts": False,
             "tasks": [{"name": "probe", "galera_stream_probe": args}]}]
    playbook = os.path.join(lab.workdir, f"stream{lab.runs}.yml")
    with open(playbook, "w", encoding="utf-8") as handle:
        json.dump(play, handle)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_LIBRARY=library, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1",
               ANSIBLE_LOCAL_TEMP=os.path.join(lab.workdir, "tmp"))
    playbook_bin = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    if not os.path.exists(playbook_bin):
        playbook_bin = shutil.which("ansible-playbook")
    proc = subprocess.run([playbook_bin, "-i", os.path.join(lab.workdir, "inventory.ini"), playbook],
                          capture_output=True, text=True, env=env, cwd=lab.workdir, check=False, timeout=900)
    try:
        result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["node"]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(f"ansible-playbook gave no result ({exc}); rc={proc.returncode}\n"
                             f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    if lab.s3["secret_key"] in proc.stdout + proc.stderr:
        raise AssertionError("the S3 secret key appears in the playbook's output")
    return result


def dest_of(lab, kind: str, where: str) -> dict:
    return lab.ssh_dest(path=f"/srv/{where}") if kind == "ssh" else lab.s3_dest(prefix=f"{where}/")


def bid(hour: int, run: str) -> str:
    return f"{CLUSTER}_node_20261202T{hour:02d}0000Z-{run}"


@pytest.fixture(scope="module", autouse=True)
def cleanup(lab):
    yield
    probe(lab, action="cleanup", dest=lab.ssh_dest())


@pytest.mark.parametrize("kind", ["ssh", "s3"])
def test_a_stream_goes_straight_to_the_store_and_is_verified_there(lab, kind):
    backup, run_id = bid(1 if kind == "ssh" else 2, "0000aa01"), "0000aa01"
    dest = dest_of(lab, kind, "stream")
    result = probe(lab, action="stream", dest=dest, backup_id=backup, run_id=run_id, mib=40)
    assert not result.get("failed"), result.get("msg")
    # The node kept only the record: no data file in its partial (which finish would publish).
    assert result["local"] == [".run.json", "SHA256SUMS", "backup.log", "manifest.json", "meta", "tables.json"]
    assert result["meta"] == ["xtrabackup_checkpoints"]
    assert result["listing"]["manifests"] == [backup] and result["listing"]["partials"] == {}
    data_sha = result["stream"]["sha256"]
    rel = result["stream"]["file"]
    assert rel == "backup.xbstream.zst" and result["stream"]["bytes"] > 40 * MIB
    if kind == "ssh":
        top = f"{dest['path']}/{backup}"
        check = lab.store(f"cd {top} && sha256sum --quiet -c SHA256SUMS && sha256sum {rel} && ls -A . && "
                          f"ls -A {dest['path']}", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.split()[0] == data_sha
        assert f"{backup}.partial" not in check.stdout and ".run.json" not in check.stdout
        extracted = lab.store(f"rm -rf /tmp/x && mkdir /tmp/x && zstd -dcq {top}/{rel} | mbstream -x -C /tmp/x && "
                              "sha256sum /tmp/x/ibdata1 && cat /tmp/x/xtrabackup_checkpoints && rm -rf /tmp/x")
        assert extracted.stdout.split()[0] == result["source"]
        assert "to_lsn = 4711" in extracted.stdout
    else:
        objects = lab.s3_objects(f"stream/{backup}/")
        assert sorted(o[len(f"stream/{backup}/"):] for o in objects) == [
            "SHA256SUMS", "backup.log", rel, "manifest.json", "meta/xtrabackup_checkpoints", "tables.json"]
        assert objects[f"stream/{backup}/{rel}"] == data_sha
        head = lab.s3_client().head_object(Bucket=lab.s3["bucket"], Key=f"stream/{backup}/{rel}")
        assert head["ETag"].strip('"').endswith("-3"), f"not a multipart upload of 16 MiB parts: {head['ETag']}"
        assert result["uploads"] == []
    # What a restore does: fetch it (every file checked on arrival) and extract it.
    fetched = probe(lab, action="fetch", dest=dest, backup_id=backup)
    assert not fetched.get("failed"), fetched.get("msg")
    assert fetched["ibdata1"] == result["source"] and "to_lsn = 4711" in fetched["checkpoints"]


@pytest.mark.parametrize("kind", ["ssh", "s3"])
def test_a_stream_stopped_mid_way_leaves_nothing_that_counts_and_cleans_up(lab, kind):
    backup, run_id = bid(3 if kind == "ssh" else 4, "0000bb02"), "0000bb02"
    dest = dest_of(lab, kind, "stopped")
    result = probe(lab, action="stop", dest=dest, backup_id=backup, run_id=run_id, mib=60, after_mib=20)
    assert not result.get("failed"), result.get("msg")
    assert result["error"] and result["stopping"] == "the run was stopped (SIGTERM) by the test", result
    assert 20 * MIB <= result["sent"] < 60 * MIB
    staging = backup + ".partial" if kind == "ssh" else backup
    # Before its own clean-up: the staging place with this run's record, never a backup; no upload left.
    assert result["before"] == dict(manifests=[], partials={staging: run_id}, other=[])
    assert result["uploads_before"] == []
    assert result["after"] == dict(manifests=[], partials={}, other=[])
    if kind == "ssh":
        assert lab.store(f"ls -A {dest['path']}").stdout.strip() == ""
    else:
        assert lab.s3_objects("stopped/") == {}
        assert not lab.s3_client().list_multipart_uploads(Bucket=lab.s3["bucket"], Prefix="stopped/").get("Uploads")


@pytest.mark.parametrize("kind", ["ssh", "s3"])
def test_a_stream_killed_mid_way_is_swept_by_retention_there(lab, kind):
    backup, run_id = bid(5 if kind == "ssh" else 6, "0000cc03"), "0000cc03"
    dest = dest_of(lab, kind, "killed")
    result = probe(lab, action="kill", dest=dest, backup_id=backup, run_id=run_id, mib=60, after_mib=24)
    assert not result.get("failed"), result.get("msg")
    staging = backup + ".partial" if kind == "ssh" else backup
    assert result["before"] == dict(manifests=[], partials={staging: run_id}, other=[]), result["sent"]
    if kind == "s3":  # killed while its multipart upload was open: not an object, invisible to a listing
        assert result["uploads_before"] == [f"killed/{backup}/backup.xbstream.zst"]
    # The next retention there: the run record names this host and a process that is gone.
    assert result["swept"] == [staging]
    assert result["after"] == dict(manifests=[], partials={}, other=[])
    assert result["uploads_after"] == []
    if kind == "ssh":
        assert lab.store(f"ls -A {dest['path']}").stdout.strip() == ""
