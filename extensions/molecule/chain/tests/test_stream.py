"""Streamed backups (galera_backup_stream_to, stream.yml of the chain scenario): galera-node3 backed up into
/var/backups/tiny, a 256 KiB tmpfs, straight to the S3 server (encrypted) and to the SSH store (a full and an
incremental); read from the node, the store container and the S3 server, and the restore drills' results."""

from __future__ import annotations

import hashlib
import json
import os

import boto3
import pytest
import testinfra

from conftest import node_of as node

testinfra_hosts = ["galera"]
TINY = "/var/backups/tiny"
TINY_BYTES = 256 * 1024
STREAM_DIR = "/srv/backups/stream"


def ephemeral(name: str):
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "store", name), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def state():
    return ephemeral("store.json")


@pytest.fixture(scope="module")
def ids():
    """{"s3-stream-full": id, "ssh-stream-full": id, "ssh-stream-incremental": id}"""
    return ephemeral("streamed.json")


@pytest.fixture(scope="module")
def store():
    return testinfra.get_host("docker://galera-store")


@pytest.fixture(scope="module")
def records(nodes, ids):
    """The local records' manifests on galera-node3, by id."""
    node3 = node(nodes, "galera-node3")
    out = {}
    for backup in ids.values():
        text = node3.run(f"cat {TINY}/{backup}/manifest.json")
        assert text.rc == 0, text.stderr
        out[backup] = json.loads(text.stdout)
    return out


def s3_client(state):
    s3 = state["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint_url"], region_name=s3["region"],
                        aws_access_key_id=s3["access_key"], aws_secret_access_key=s3["secret_key"])


def test_the_tiny_directory_holds_only_small_records_of_much_bigger_backups(nodes, ids, records):
    node3 = node(nodes, "galera-node3")
    listed = node3.run(f"ls -A1 {TINY}").stdout.split()
    assert sorted(listed) == sorted(ids.values()), listed  # no .partial, no .failed.json, nothing else
    files = node3.run(f"cd {TINY} && find . -type f | sort").stdout.split()
    assert not [f for f in files if ".xbstream" in f or f.endswith((".zst", ".enc", ".sql"))], files
    used = int(node3.run(f"du -sb {TINY} | cut -f1").stdout)
    assert used < TINY_BYTES
    for backup, manifest in records.items():
        # More than twice the whole filesystem (zstd makes this small data set about 1 MB): it never fitted here.
        assert manifest["bytes"] > 2 * TINY_BYTES, (backup, manifest["bytes"])
        assert manifest["verify"]["level"] == "checksum" and manifest["desync"]["flow_control_sent"] == 0
        assert sorted(node3.run(f"ls -A1 {TINY}/{backup}").stdout.split()) == [
            "SHA256SUMS", "backup.log", "manifest.json", "meta", "tables.json"]
    s3_manifest = records[ids["s3-stream-full"]]
    assert s3_manifest["streamed_to"]["name"] == "s3-stream"
    assert s3_manifest["streamed_to"]["files"] == ["backup.xbstream.zst.enc"]
    assert list(s3_manifest["encryption"]["files"]) == ["backup.xbstream.zst.enc"] and s3_manifest["encryption"]["seal"]


def test_the_s3_stream_is_complete_there_verified_and_nothing_is_left_in_flight(state, ids, records):
    client = s3_client(state)
    bucket = state["s3"]["bucket"]
    backup = ids["s3-stream-full"]
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="stream/"):
        keys += [item["Key"] for item in page.get("Contents", [])]
    prefix = f"stream/{backup}/"
    assert all(k.startswith(prefix) for k in keys), keys  # the SSH streams were not copied to S3
    manifest = client.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read()
    assert json.loads(manifest) == records[backup]
    sums = client.get_object(Bucket=bucket, Key=prefix + "SHA256SUMS")["Body"].read()
    assert hashlib.sha256(sums).hexdigest() == records[backup]["sha256"]
    listed = []
    for line in sums.decode().splitlines():
        digest, name = line.split(maxsplit=1)
        listed.append(name.removeprefix("./"))
        body = client.get_object(Bucket=bucket, Key=prefix + listed[-1])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, name
    # Exactly the backup's files: no run record left, nothing unlisted.
    assert sorted(k[len(prefix):] for k in keys) == sorted(listed + ["SHA256SUMS", "manifest.json"])
    assert {"backup.xbstream.zst.enc", "tables.json", "backup.log"} <= set(listed)
    # MariaDB 11 names mariabackup's metadata files mariadb_backup_*, 10.x xtrabackup_*.
    assert {"meta/xtrabackup_checkpoints", "meta/mariadb_backup_checkpoints"} & set(listed), listed
    assert not client.list_multipart_uploads(Bucket=bucket, Prefix="stream/").get("Uploads")


def test_the_ssh_streams_are_a_verified_chain_there(store, ids, records):
    full, inc = ids["ssh-stream-full"], ids["ssh-stream-incremental"]
    assert store.run(f"ls -A1 {STREAM_DIR}").stdout.split() == sorted([full, inc])
    for backup in (full, inc):
        check = store.run(f"cd {STREAM_DIR}/{backup} && sha256sum --quiet -c SHA256SUMS && sha256sum SHA256SUMS "
                          "&& test ! -e .run.json && cat manifest.json")
        assert check.rc == 0, check.stderr
        assert check.stdout.split()[0] == records[backup]["sha256"]
    assert records[full]["type"] == "full" and records[inc]["type"] == "incremental"
    assert records[inc]["parent"] == full and records[inc]["chain"] == [full, inc]
    assert records[inc]["position"]["from_lsn"] == records[full]["position"]["to_lsn"]


@pytest.mark.parametrize("stream, key", [("s3-stream", "s3-stream-full"), ("ssh-stream", "ssh-stream-incremental")])
def test_the_recovery_drill_restored_each_streamed_backup(ids, stream, key):
    drill = ephemeral(f"drill-{stream}.json")
    assert drill["result"] == "ok", drill
    assert drill["id"] == ids[key]
    # Every table of the backup was there and readable (the chain's and the streams' own).
    assert drill["verify"]["tables"] == drill["verify"]["expected"] >= 2, drill["verify"]
    if stream == "s3-stream":
        assert drill["integrity"] == "verified"  # the encrypted stream's MAC, computed as it passed
    else:
        assert drill["chain"] == [ids["ssh-stream-full"], ids[key]]


def test_the_catalogue_counts_the_streamed_backups(nodes, ids):
    node3 = node(nodes, "galera-node3")
    info = node3.ansible("dbtools.galera.galera_backup_info", f"path={TINY} max_age=3600", check=False)
    assert not info.get("failed"), info
    assert info["summary"].startswith("OK"), info["summary"]
    assert info["newest"]["dbtools"]["id"] == ids["ssh-stream-incremental"]
