# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""galera_backup_copy against real stores: sshd in a container and moto's S3 server.

A copy whose destination does not match (a file damaged there after an earlier copy) is
REPAIRED, not just reported: the run notices the mismatch, takes the copy out of the
catalogue (SSH: back to ``<id>.partial``; S3: ``manifest.json`` deleted first), sends the
damaged files again, verifies everything again and reports ``changed`` with the file in
``repaired``. A mismatch that persists (or a damaged LOCAL file) fails the run.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timedelta, timezone

import pytest

# The lab's fixed names (tests/integration/conftest.py).
BACKUP_DIR = "/var/backups/galera"
CLUSTER = "copytest"
NODE_KNOWN_HOSTS = "/root/.ssh/store_known_hosts"
BIG = "copytest_node1_20261125T030000Z"
UUID = "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"  # the state uuid conftest's make_backup records


def ts(day: int, hour: int = 3) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:00:00Z"


def bid(day: int, hour: int = 3, cluster: str = CLUSTER, host: str = "node1") -> str:
    return f"{cluster}_{host}_202611{day:02d}T{hour:02d}0000Z"


def store_sums(lab, path: str) -> dict:
    out = lab.store(f"cd {path} && find . -type f -print0 | sort -z | xargs -0 sha256sum").stdout
    return {line.split(None, 1)[1][2:]: line.split(None, 1)[0] for line in out.splitlines()}


def store_dirs(lab) -> list:
    return sorted(lab.store(f"ls -1 {lab.ssh['path']}", check=False).stdout.split())


def s3_prefixes(lab, prefix: str) -> dict:
    """{backup name: set of relative files} under ``prefix``."""
    groups = {}
    for key in lab.s3_objects(prefix):
        name, _sep, rel = key[len(prefix):].partition("/")
        groups.setdefault(name, set()).add(rel)
    return groups


@pytest.fixture(scope="module")
def big(lab):
    """A 20 MiB backup (random data, so two S3 multipart parts) with a nested file."""
    return lab.make_backup(BIG, ts(25), size_kib=20 * 1024)


def test_ssh_copy_is_verified_and_idempotent(lab, big):
    before = lab.local_snapshot(BIG)
    result, _out = lab.copy(BIG, lab.ssh_dest(), name="store")
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["copied"] is True and result["verified"] is True
    assert result["url"] == f"ssh://root@{lab.ssh['ip']}:22{lab.ssh['path']}/{BIG}"
    assert result["files"] == 4  # backup.xbstream.zst, meta/xtrabackup_checkpoints, SHA256SUMS, manifest.json
    assert result["bytes"] > 20 * 1024 * 1024
    assert result["dest"]["name"] == "store"

    # Checked from the store's side: the same files, byte for byte, and no .partial left over.
    assert store_sums(lab, f"{lab.ssh['path']}/{BIG}") == lab.local_sums(BIG)
    assert lab.store(f"cd {lab.ssh['path']}/{BIG} && sha256sum --quiet -c SHA256SUMS", check=False).returncode == 0
    assert f"{BIG}.partial" not in store_dirs(lab)

    again, _out = lab.copy(BIG, lab.ssh_dest(), name="store")
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["copied"] is False and again["verified"] is True
    assert lab.local_snapshot(BIG) == before


def test_s3_copy_is_verified_multipart_and_idempotent(lab, big):
    result, out = lab.copy(BIG, lab.s3_dest())
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["verified"] is True
    assert result["url"] == f"s3://{lab.s3['bucket']}/galera/{BIG}"
    # No secret in the result or anywhere in the playbook's output.
    assert lab.s3["secret_key"] not in out
    assert "secret_key" not in result["dest"] and "access_key" not in result["dest"]

    # Read back from the test side: exactly the backup's files, each with the right content.
    objects = lab.s3_objects(f"galera/{BIG}/")
    expected = {f"galera/{BIG}/{rel}": digest for rel, digest in lab.local_sums(BIG).items()}
    assert objects == expected
    head = lab.s3_client().head_object(Bucket=lab.s3["bucket"], Key=f"galera/{BIG}/backup.xbstream.zst")
    assert head["ETag"].strip('"').endswith("-2"), f"not a multipart upload: {head['ETag']}"

    again, _out = lab.copy(BIG, lab.s3_dest())
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["verified"] is True


def test_check_mode_changes_nothing(lab):
    backup = bid(20)
    lab.make_backup(backup, ts(20))
    before = lab.local_snapshot(backup)
    for dest in (lab.ssh_dest(), lab.s3_dest()):
        result, _out = lab.copy(backup, dest, check_mode=True, keep=5)
        assert not result.get("failed"), result.get("msg")
        assert result["changed"] is True and result["copied"] is True
        assert result["verified"] is False
    assert not [d for d in store_dirs(lab) if d.startswith(backup)]
    assert not lab.s3_objects(f"galera/{backup}/")
    assert lab.local_snapshot(backup) == before


@pytest.mark.parametrize("kind", ["ssh", "s3"])
def test_retention_keeps_whole_chains(lab, kind):
    """keep=1 keeps the newest restorable backup with its whole chain (full + incrementals),
    removes the older full backup, and leaves other clusters and leftovers that carry no run record
    (reported: nothing proves whose they are)."""
    old_full, full, inc1, inc2 = bid(10, host="r" + kind), bid(11, host="r" + kind), bid(12, host="r" + kind), \
        bid(13, host="r" + kind)
    other = bid(9, cluster="othercluster", host="r" + kind)
    lab.make_backup(old_full, ts(10))
    lab.make_backup(full, ts(11))
    lab.make_backup(inc1, ts(12), kind="incremental", parent=full, chain=[full, inc1])
    lab.make_backup(inc2, ts(13), kind="incremental", parent=inc1, chain=[full, inc1, inc2])
    lab.make_backup(other, ts(9), cluster="othercluster")
    prefix = f"galera-{kind}-retention/"
    dest = lab.ssh_dest(path=f"/srv/retention-{kind}") if kind == "ssh" else lab.s3_dest(prefix=prefix)
    for backup in (old_full, full, inc1, other):
        result, _out = lab.copy(backup, dest)
        assert result["changed"] is True, result.get("msg")
    stale_ours, stale_other = bid(8, host="crashed"), bid(8, cluster="othercluster", host="crashed")
    if kind == "ssh":
        lab.store(f"mkdir -p {dest['path']}/{stale_ours}.partial {dest['path']}/{stale_other}.partial && "
                  f"echo x > {dest['path']}/{stale_ours}.partial/backup.xbstream.zst")
    else:
        client = lab.s3_client()
        for name in (stale_ours, stale_other):
            client.put_object(Bucket=lab.s3["bucket"], Key=f"{prefix}{name}/backup.xbstream.zst", Body=b"x")

    def present():
        if kind == "ssh":
            return set(lab.store(f"ls -1 {dest['path']}").stdout.split())
        return {name + (".partial" if "manifest.json" not in rels else "")
                for name, rels in s3_prefixes(lab, prefix).items()}

    everything = {old_full, full, inc1, other, stale_ours + ".partial", stale_other + ".partial"}
    assert present() == everything

    # Check mode first: the plan, and nothing deleted.
    planned, _out = lab.copy(inc2, dest, keep=1, check_mode=True)
    assert not planned.get("failed"), planned.get("msg")
    assert planned["removed"] == [old_full]
    assert planned["removed_partial"] == []
    assert present() == everything

    result, _out = lab.copy(inc2, dest, keep=1)
    assert not result.get("failed"), result.get("msg")
    assert result["removed"] == [old_full] and result["removed_partial"] == []
    assert sorted(result["kept"]) == sorted([full, inc1, inc2])
    assert present() == {full, inc1, inc2, other, stale_ours + ".partial", stale_other + ".partial"}
    assert [p for p in result["problems"] if stale_ours in p and "no valid run record" in p]
    assert not [p for p in result["problems"] if "othercluster" in p]


@pytest.mark.parametrize("kind", ["ssh", "s3"])
def test_damaged_copy_at_destination_is_repaired(lab, big, kind):
    """A file damaged at the destination (same size, same time: rsync's quick check would miss it)
    is found by the next run, which copies it again and verifies the whole copy again."""
    dest = lab.ssh_dest() if kind == "ssh" else lab.s3_dest()
    first, _out = lab.copy(BIG, dest)
    assert not first.get("failed"), first.get("msg")
    key = f"galera/{BIG}/meta/xtrabackup_checkpoints"
    if kind == "ssh":
        target = f"{lab.ssh['path']}/{BIG}/meta/xtrabackup_checkpoints"
        lab.store(f"cp -p {target} /tmp/ref && printf 'X' | dd of={target} bs=1 seek=0 conv=notrunc 2>/dev/null "
                  f"&& touch -r /tmp/ref {target}")
        assert store_sums(lab, f"{lab.ssh['path']}/{BIG}") != lab.local_sums(BIG)
    else:
        client = lab.s3_client()
        body = client.get_object(Bucket=lab.s3["bucket"], Key=key)["Body"].read()
        client.put_object(Bucket=lab.s3["bucket"], Key=key, Body=b"X" + body[1:])
    before = lab.local_snapshot(BIG)

    result, _out = lab.copy(BIG, dest)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["verified"] is True
    assert result["repaired"] == ["meta/xtrabackup_checkpoints"]
    assert any("does not match" in w for w in result.get("warnings", [])), result.get("warnings")
    if kind == "ssh":
        assert store_sums(lab, f"{lab.ssh['path']}/{BIG}") == lab.local_sums(BIG)
        assert f"{BIG}.partial" not in store_dirs(lab)
    else:
        expected = {f"galera/{BIG}/{rel}": digest for rel, digest in lab.local_sums(BIG).items()}
        assert lab.s3_objects(f"galera/{BIG}/") == expected
    assert lab.local_snapshot(BIG) == before


def test_damaged_local_backup_fails_and_is_left_alone(lab):
    """A local file that no longer matches SHA256SUMS: the run fails naming the LOCAL file, the
    destination keeps only a .partial, and the local backup is not touched."""
    backup = bid(21)
    lab.make_backup(backup, ts(21))
    # Every bit of byte 100 flipped (writing a fixed byte left the random file unchanged once in 256 runs).
    lab.node(f"python3 -c \"f = open('{BACKUP_DIR}/{backup}/backup.xbstream.zst', 'r+b'); f.seek(100); b = f.read(1); "
             f"f.seek(100); f.write(bytes([b[0] ^ 0xff]))\"")
    before = lab.local_snapshot(backup)
    result, _out = lab.copy(backup, lab.ssh_dest())
    assert result.get("failed") is True
    assert "LOCAL backup" in result["msg"] and "backup.xbstream.zst" in result["msg"]
    assert backup not in store_dirs(lab)
    assert f"{backup}.partial" in store_dirs(lab)
    assert lab.local_snapshot(backup) == before


def test_wrong_host_key_fails_clearly_and_changes_nothing(lab, big):
    backup = bid(22)
    lab.make_backup(backup, ts(22))
    before = lab.local_snapshot(backup)
    # The store's address with another host's key: what a man in the middle looks like.
    lab.node("rm -f /tmp/other /tmp/other.pub && ssh-keygen -q -t ed25519 -N '' -f /tmp/other && "
             f"echo \"{lab.ssh['ip']} $(cut -d' ' -f1,2 /tmp/other.pub)\" > /root/.ssh/wrong_known_hosts")
    result, _out = lab.copy(backup, lab.ssh_dest(known_hosts_file="/root/.ssh/wrong_known_hosts"))
    assert result.get("failed") is True
    assert "host key" in result["msg"] and "CHANGED" in result["msg"], result["msg"]
    assert "Nothing was changed" in result["msg"]
    # accept-new does not accept a changed key either.
    result, _out = lab.copy(backup, lab.ssh_dest(known_hosts_file="/root/.ssh/wrong_known_hosts",
                                                 strict_host_key_checking="accept-new"))
    assert result.get("failed") is True and "CHANGED" in result["msg"]
    # An unknown host: refused with the fix in the message.
    lab.node(": > /root/.ssh/empty_known_hosts")
    result, _out = lab.copy(backup, lab.ssh_dest(known_hosts_file="/root/.ssh/empty_known_hosts"))
    assert result.get("failed") is True
    assert "is unknown" in result["msg"] and "accept-new" in result["msg"], result["msg"]
    assert not [d for d in store_dirs(lab) if d.startswith(backup)]
    assert lab.local_snapshot(backup) == before
    # The right known_hosts file still works (the failures above were the key, nothing else).
    ok, _out = lab.copy(backup, lab.ssh_dest(known_hosts_file=NODE_KNOWN_HOSTS))
    assert not ok.get("failed"), ok.get("msg")


def test_refused_login_and_incomplete_source(lab):
    backup = bid(23)
    lab.make_backup(backup, ts(23))
    lab.node("rm -f /tmp/stranger /tmp/stranger.pub && ssh-keygen -q -t ed25519 -N '' -f /tmp/stranger")
    result, _out = lab.copy(backup, lab.ssh_dest(identity_file="/tmp/stranger"))
    assert result.get("failed") is True
    assert "refused the login" in result["msg"] and "authorized_keys" in result["msg"], result["msg"]

    lab.node(f"rm {BACKUP_DIR}/{backup}/manifest.json")
    result, _out = lab.copy(backup, lab.ssh_dest())
    assert result.get("failed") is True
    assert "has no manifest.json" in result["msg"] and "Nothing was copied" in result["msg"], result["msg"]
    assert not [d for d in store_dirs(lab) if d.startswith(backup)]


def run_record(backup_id: str, started_at: str, cluster: str = CLUSTER, host: str = "elsewhere",
               process: dict | None = None) -> bytes:
    """A run record as the collection writes it (plugins/module_utils/_manifest.py run_record)."""
    return json.dumps({"format": 1, "kind": "dbtools.galera run", "what": "copy", "run_id": "0a1b2c3d",
                       "backup": backup_id, "cluster": {"name": cluster, "state_uuid": UUID}, "owner": None,
                       "host": host, "process": process or {"pid": 4194304, "boot_id": None, "start_ticks": 1},
                       "started_at": started_at}).encode()


@pytest.mark.parametrize("kind", ["ssh", "s3"])
def test_retention_leaves_foreign_objects_and_removes_only_proven_leftovers(lab, kind):
    """The security review's finding: a store shared with other things. Everything whose name merely
    starts with '<cluster>_' (logs, binlogs, another cluster's copy in flight) survives retention; an
    unfinished copy of ours goes only when its run record proves it abandoned (older than the margin,
    or its process dead on this very host)."""
    now = datetime.now(timezone.utc)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    mine = bid(14, host="fkeep" + kind)
    lab.make_backup(mine, ts(14))
    east = f"{CLUSTER}_east_db1_{now.strftime('%Y%m%dT%H%M%SZ')}-0123abcd"       # cluster copytest_east, in flight
    abandoned = f"{CLUSTER}_crashed_{(now - timedelta(days=2)).strftime('%Y%m%dT%H%M%SZ')}-0a1b2c3d"
    dead_here = f"{CLUSTER}_died_{(now - timedelta(minutes=5)).strftime('%Y%m%dT%H%M%SZ')}-0a1b2c3d"
    young = f"{CLUSTER}_young_{(now - timedelta(minutes=5)).strftime('%Y%m%dT%H%M%SZ')}-0a1b2c3d"
    boot_id = lab.node("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    dead_process = {"pid": 4194304, "boot_id": boot_id, "start_ticks": 1}    # above pid_max: never alive
    node_host = lab.node("hostname").stdout.strip()
    suffix = ".partial" if kind == "ssh" else ""
    plants = {
        f"{CLUSTER}_logs": {"mysqld.log": b"log lines"},
        f"{CLUSTER}_binlogs": {"x": b"binlog"},
        east + suffix: {"backup.xbstream.zst": b"half",
                        ".run.json": run_record(east, now.strftime(iso), cluster=f"{CLUSTER}_east")},
        abandoned + suffix: {"backup.xbstream.zst": b"half",
                             ".run.json": run_record(abandoned, (now - timedelta(days=2)).strftime(iso))},
        dead_here + suffix: {"backup.xbstream.zst": b"half",
                             ".run.json": run_record(dead_here, (now - timedelta(minutes=5)).strftime(iso),
                                                     host=node_host, process=dead_process)},
        young + suffix: {"backup.xbstream.zst": b"half",
                         ".run.json": run_record(young, (now - timedelta(minutes=5)).strftime(iso))},
    }
    if kind == "ssh":
        path = "/srv/foreign-ssh"
        dest = lab.ssh_dest(path=path)
        for name, files in plants.items():
            for rel, body in files.items():
                lab.store(f"mkdir -p {path}/{name} && printf %s {shlex.quote(body.decode())} > {path}/{name}/{rel}")

        def snapshot():
            return {name: store_sums(lab, f"{path}/{name}") for name in store_dirs_at(lab, path)}
    else:
        prefix = "galera-foreign/"
        dest = lab.s3_dest(prefix=prefix)
        client = lab.s3_client()
        for name, files in plants.items():
            for rel, body in files.items():
                client.put_object(Bucket=lab.s3["bucket"], Key=f"{prefix}{name}/{rel}", Body=body)

        def snapshot():
            out = {}
            for key, digest in lab.s3_objects(prefix).items():
                name, _sep, rel = key[len(prefix):].partition("/")
                out.setdefault(name, {})[rel] = digest
            return out
    before = snapshot()
    assert set(before) == set(plants)

    result, _out = lab.copy(mine, dest, keep=1)
    assert not result.get("failed"), result.get("msg")
    assert sorted(result["removed_partial"]) == sorted([abandoned + suffix, dead_here + suffix])
    assert result["in_flight"] == [young + suffix]
    after = snapshot()
    for name in (f"{CLUSTER}_logs", f"{CLUSTER}_binlogs", east + suffix, young + suffix):
        assert after[name] == before[name], name
    assert abandoned + suffix not in after and dead_here + suffix not in after
    assert mine in after


def store_dirs_at(lab, path: str) -> list:
    return sorted(lab.store(f"ls -1 {path}", check=False).stdout.split())


def test_s3_object_lock_refuses_retention_and_the_run_reports_it(lab):
    """A bucket with Object Lock and a default retention (COMPLIANCE, 1 day): the copies upload (S3
    wants a checksum header with each upload there), and retention keeps the locked backups whole,
    reporting each as refused, instead of failing the run or hiding them behind delete markers."""
    bucket = "dbtools-locked"
    client = lab.s3_client()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    older, old, new = bid(1, host="lock"), bid(2, host="lock"), bid(3, host="lock")
    for day, backup in ((1, older), (2, old), (3, new)):
        lab.make_backup(backup, ts(day))
    dest = lab.s3_dest(bucket=bucket, prefix="locked/")
    for backup in (older, old):
        result, _out = lab.copy(backup, dest)
        assert not result.get("failed"), result.get("msg")
        assert result["verified"] is True
    head = client.head_object(Bucket=bucket, Key=f"locked/{older}/manifest.json")
    assert head.get("ObjectLockMode") == "COMPLIANCE" and head.get("ObjectLockRetainUntilDate")

    def snapshot():
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="locked/"):
            for item in page.get("Contents", []):
                name, _sep, rel = item["Key"][len("locked/"):].partition("/")
                out.setdefault(name, set()).add(rel)
        return out

    would, _out = lab.copy(new, dest, keep=1, check_mode=True)
    assert not would.get("failed"), would.get("msg")
    assert would["removed"] == [] and sorted(would["kept"]) == sorted([older, old, new])
    before = snapshot()
    assert set(before) == {older, old}

    result, _out = lab.copy(new, dest, keep=1)
    assert not result.get("failed"), result.get("msg")
    assert result["removed"] == [] and sorted(result["kept"]) == sorted([older, old, new])
    for backup in (older, old):
        text = [p for p in result["problems"] if backup in p]
        assert len(text) == 1 and "kept: the destination refuses deletion (Object Lock COMPLIANCE until " in text[0]
        assert any(backup in w and "refuses deletion" in w for w in result.get("warnings", []))
    after = snapshot()
    assert after[older] == before[older] and after[old] == before[old]   # whole, manifest included
    assert "manifest.json" in after[new]
    again, _out = lab.copy(new, dest, keep=1)   # asked again, once, still refused: not a failure
    assert not again.get("failed") and again["changed"] is False and again["removed"] == []


def test_an_ssh_path_with_shell_syntax_is_used_as_written(lab, big):
    # The destination path reaches the store's shell quoted, and ssh's argv is not expanded on the node
    # (AnsibleModule.run_command expands $VAR and ~ unless told not to): nothing runs, nothing else is written.
    odd = "/srv/odd $HOME ~ `touch /tmp/pwned1` $(touch /tmp/pwned2) 'q\" ;x"
    lab.store("rm -rf /srv/odd* /tmp/pwned1 /tmp/pwned2")
    try:
        result, _out = lab.copy(BIG, lab.ssh_dest(path=odd), name="odd")
        assert not result.get("failed"), result.get("msg")
        assert result["copied"] is True and result["verified"] is True
        assert lab.store(f"ls -A {shlex.quote(odd)}").stdout.split() == [BIG]
        assert store_sums(lab, shlex.quote(f"{odd}/{BIG}")) == lab.local_sums(BIG)
        # The path's slashes make it nested directories: one new top entry under /srv, nothing beside it.
        assert lab.store("ls -d /srv/odd*").stdout.splitlines() == ["/srv/" + odd[len("/srv/"):].split("/", maxsplit=1)[0]]
        assert lab.store("ls /tmp/pwned1 /tmp/pwned2", check=False).returncode != 0
        assert lab.node("ls /tmp/pwned1 /tmp/pwned2", check=False).returncode != 0
    finally:
        lab.store("rm -rf /srv/odd*")
