"""Incremental chains, encryption, off-host copies, restore and freshness, read from the nodes, the
SSH store container and the S3 server after the chain scenario's converge."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile

import boto3
import pytest
import testinfra

from conftest import node_of as node, playbook_env, run_playbook, sql

testinfra_hosts = ["galera"]
CHAIN_DIR = "/var/backups/galera-chain"
STORE_DIR = "/srv/backups/galera"
TABLE_SUM = "SELECT COUNT(*), COALESCE(BIT_XOR(CRC32(CONCAT_WS('#', id, batch, v))), 0) FROM chain.t"
WRONG_KEY = "not-the-key-the-chain-was-encrypted-with"


@pytest.fixture(scope="module")
def state():
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "store", "store.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def store():
    return testinfra.get_host("docker://galera-store")


@pytest.fixture(scope="module")
def manifests(nodes):
    """The chain directory's manifests on galera-node3, oldest first."""
    node3 = node(nodes, "galera-node3")
    out = node3.run(f"cat {CHAIN_DIR}/*/manifest.json | python3 -c "
                    "'import json,sys; d=json.JSONDecoder(); s=sys.stdin.read(); i=0; r=[]\n"
                    "while i < len(s):\n"
                    "    s2=s[i:].lstrip(); i=len(s)-len(s2)\n"
                    "    if not s2: break\n"
                    "    o, n = d.raw_decode(s2); r.append(o); i += n\n"
                    "print(json.dumps(r))'")
    assert out.rc == 0, out.stderr
    return sorted(json.loads(out.stdout), key=lambda m: m["finished_at"] + m["id"])


def test_full_then_two_incrementals_then_full_with_recorded_chain(manifests):
    assert [m["type"] for m in manifests] == ["full", "incremental", "incremental", "full"]
    full, inc1, inc2, full2 = manifests
    assert full["parent"] is None and full["chain"] == [full["id"]]
    assert inc1["parent"] == full["id"] and inc1["chain"] == [full["id"], inc1["id"]]
    assert inc2["parent"] == inc1["id"] and inc2["chain"] == [full["id"], inc1["id"], inc2["id"]]
    assert full2["parent"] is None and full2["chain"] == [full2["id"]]
    # Each incremental starts where its parent ended.
    assert inc1["position"]["from_lsn"] == full["position"]["to_lsn"]
    assert inc2["position"]["from_lsn"] == inc1["position"]["to_lsn"]
    # to_lsn is the checkpoint LSN at the backup's start: it only moves with InnoDB checkpoints.
    assert full["position"]["to_lsn"] <= inc1["position"]["to_lsn"] <= inc2["position"]["to_lsn"]
    assert full["position"]["seqno"] < inc1["position"]["seqno"] < inc2["position"]["seqno"]
    assert inc2["verify"]["level"] == "restore" and inc2["verify"]["checksums"]["chain.t"]["rows"] == 9000
    for m in manifests:
        assert m["desync"]["flow_control_sent"] == 0
        # Asked for, and what the backup process really ran with.
        assert m["throttle"] == {"throttle": 40, "nice": 15, "ionice": "best-effort/6",
                                 "applied": {"nice": 15, "ionice": "best-effort: prio 6"}}


def test_backups_are_encrypted_at_rest_and_record_the_key_id_never_the_key(nodes, manifests):
    node3 = node(nodes, "galera-node3")
    # Salted key ids: one key, a different id per backup (nobody can tell two backups share a key, and a
    # guess costs a PBKDF2 derivation); every encrypted file has its MAC and the record is sealed.
    key_ids = [m["encryption"]["key_id"] for m in manifests]
    assert len(set(key_ids)) == len(manifests) and all(len(k) == 32 for k in key_ids), key_ids
    for m in manifests:
        assert m["encryption"]["cipher"] == "aes-256-ctr" and m["encryption"]["kdf"] == "pbkdf2"
        assert m["encryption"]["scheme"] == 2 and m["encryption"]["seal"]
        assert list(m["encryption"]["files"]) == ["backup.xbstream.zst.enc"]
        files = node3.run(f"cd {CHAIN_DIR}/{m['id']} && find . -type f | sort").stdout.split()
        assert "./backup.xbstream.zst.enc" in files
        # No plain-text stream anywhere, not even a compressed one.
        assert not [f for f in files if f.endswith((".xbstream", ".zst", ".ibd", ".sql"))], files
        stream = node3.run(f"head -c 4 {CHAIN_DIR}/{m['id']}/backup.xbstream.zst.enc | od -An -tx1").stdout.split()
        assert stream != ["28", "b5", "2f", "fd"], "the stream starts with zstd's magic: not encrypted"
    key = "dbtools-test-backup-key-7f3a9c0e5b2d4f61a8c3e9d7b5a1f2c4"
    grep = node3.run(f"grep -rl -- {key} {CHAIN_DIR} /tmp 2>/dev/null")
    assert grep.stdout == "", f"the key was written to {grep.stdout}"


def test_the_chain_restored_from_the_ssh_store_equals_the_source(nodes, store):
    source = node(nodes, "galera-node1")
    restored = store.run(f"mariadb -S /run/mysqld/restore.sock -N -B -e \"{TABLE_SUM}; "
                         "CHECKSUM TABLE chain.t EXTENDED; SELECT @@wsrep_on\"")
    assert restored.rc == 0, restored.stderr
    expected = sql(source, f"{TABLE_SUM}; CHECKSUM TABLE chain.t EXTENDED")
    lines = [line.split("\t") for line in restored.stdout.splitlines()]
    assert lines[0] == expected[0]
    assert lines[0][0] == "9000"  # batches 1, 2 and 3: everything the last incremental saw
    assert lines[1][1] == expected[1][1]
    assert lines[2] == ["0"]


def run_restore(tmp, *extra):
    inventory = os.path.join(tmp, "inventory.ini")
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write("[galera_restore]\ngalera-store ansible_connection=community.docker.docker "
                     "ansible_python_interpreter=/usr/bin/python3\n")
    run = subprocess.run(["ansible-playbook", "-i", inventory, "dbtools.galera.restore",
                          "-e", f"galera_backup_dir={STORE_DIR}", *extra],
                         capture_output=True, text=True, timeout=600, check=False, env=playbook_env())
    run.output = " ".join((run.stdout + "\n" + run.stderr).split())
    return run


def test_a_wrong_key_fails_clearly_and_changes_nothing(store):
    before = store.run(f"cd {STORE_DIR} && find . -type f -exec sha256sum {{}} + | sort").stdout
    assert before
    with tempfile.TemporaryDirectory() as tmp:
        run = run_restore(tmp, "-e", "galera_backup_restore_datadir=/var/lib/mysql-wrongkey",
                          "-e", f"galera_backup_encrypt_key={WRONG_KEY}")
    assert run.returncode != 0
    assert "wrong key" in run.output and "Nothing was changed" in run.output, run.output[-2000:]
    assert WRONG_KEY not in run.output
    assert store.run(f"cd {STORE_DIR} && find . -type f -exec sha256sum {{}} + | sort").stdout == before
    assert store.run("find /var/lib/mysql-wrongkey -mindepth 1 | head -n 3").stdout == ""


def test_restore_refuses_a_data_directory_that_is_not_empty(store):
    with tempfile.TemporaryDirectory() as tmp:
        run = run_restore(tmp, "-e", "galera_backup_restore_datadir=/var/lib/mysql-restore",
                          "-e", "galera_backup_encrypt_key=dbtools-test-backup-key-7f3a9c0e5b2d4f61a8c3e9d7b5a1f2c4")
    assert run.returncode != 0
    assert "restore only into an empty or absent directory" in run.output and "Nothing was changed" in run.output


def test_ssh_store_kept_the_whole_chain_then_only_the_new_full(manifests, store, state):
    after_chain = json.loads(open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "store",
                                               "after_chain.json"), encoding="utf-8").read())
    # keep=1 there, but the newest backup is an incremental: its parent and the full stay with it.
    assert sorted(after_chain) == sorted(m["id"] for m in manifests[:3])
    now = store.run(f"ls -1 {STORE_DIR}").stdout.split()
    assert now == [manifests[3]["id"]]
    check = store.run(f"cd {STORE_DIR}/{now[0]} && sha256sum --quiet -c SHA256SUMS && sha256sum SHA256SUMS")
    assert check.rc == 0, check.stderr
    assert check.stdout.split()[0] == manifests[3]["sha256"]


def test_s3_copies_are_complete_and_keep_what_the_newest_two_need(manifests, state):
    s3 = state["s3"]
    client = boto3.client("s3", endpoint_url=s3["endpoint_url"], region_name=s3["region"],
                          aws_access_key_id=s3["access_key"], aws_secret_access_key=s3["secret_key"])
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix="galera/"):
        for item in page.get("Contents", []):
            objects[item["Key"]] = item["Size"]
    ids = sorted({key.split("/")[1] for key in objects})
    # keep=2: the new full and the newest incremental, which needs its parent and the old full.
    assert ids == sorted(m["id"] for m in manifests)
    for m in manifests:
        prefix = f"galera/{m['id']}/"
        sums = client.get_object(Bucket=s3["bucket"], Key=prefix + "SHA256SUMS")["Body"].read()
        assert hashlib.sha256(sums).hexdigest() == m["sha256"]
        for line in sums.decode().splitlines():
            digest, name = line.split(maxsplit=1)
            body = client.get_object(Bucket=s3["bucket"], Key=prefix + name.lstrip("*").removeprefix("./"))["Body"]
            assert hashlib.sha256(body.read()).hexdigest() == digest, name
        assert json.loads(client.get_object(Bucket=s3["bucket"], Key=prefix + "manifest.json")["Body"].read()) == m


def test_freshness_reports_ok_then_fails_when_stale(request):
    fresh = run_playbook(request, "dbtools.galera.freshness", "-e", f"galera_backup_dir={CHAIN_DIR}",
                         "-e", "galera_freshness_max_age=3600", timeout=300)
    assert fresh.returncode == 0, fresh.output[-2000:]
    assert "OK" in fresh.output
    stale = run_playbook(request, "dbtools.galera.freshness", "-e", f"galera_backup_dir={CHAIN_DIR}",
                         "-e", "galera_freshness_max_age=1", timeout=300)
    assert stale.returncode != 0
    assert "CRITICAL" in stale.output, stale.output[-2000:]


def test_a_failed_copy_keeps_the_backup_fails_the_play_and_leaves_the_node_synced(request, nodes, state):
    node3 = node(nodes, "galera-node3")
    directory = "/var/backups/galera-copyfail"
    node3.run(f"rm -rf {directory}")
    copies = [{"name": "closed-port", "type": "ssh", "host": state["ssh"]["ip"], "port": 2222,
               "path": "/srv/backups/nowhere", "identity_file": "/root/.ssh/dbtools_store_key",
               "known_hosts_file": "/root/.ssh/dbtools_store_known_hosts"}]
    run = run_playbook(request, "dbtools.galera.backup", "-e", f"galera_backup_dir={directory}",
                       "-e", "galera_backup_node=galera-node3", "-e", "galera_backup_sample_seconds=0.5",
                       "-e", json.dumps({"galera_backup_copies": copies}))
    output = run.output
    assert run.returncode != 0
    assert "is good in /var/backups/galera-copyfail/" in output, output[-3000:]
    assert "copying it failed for closed-port" in output
    kept = node3.run(f"ls -1 {directory}").stdout.split()
    assert len(kept) == 1 and not kept[0].endswith(".partial"), kept
    check = node3.run(f"cd {directory}/{kept[0]} && test -f manifest.json && sha256sum --quiet -c SHA256SUMS")
    assert check.rc == 0, check.stderr
    assert sql(node3, "SELECT @@wsrep_desync") == [["0"]]
    assert sql(node3, "SHOW STATUS LIKE 'wsrep_local_state_comment'") == [["wsrep_local_state_comment", "Synced"]]
