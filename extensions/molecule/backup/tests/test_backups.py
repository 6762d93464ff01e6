"""The galera_backup role's results, read from the nodes: backups, manifests, modes, retention,
the cluster left whole; failing runs through the dbtools.galera.backup playbook; and a restore of
the mariabackup backup into a fresh container."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import uuid

import pytest
import testinfra

from conftest import node_of as node, run_playbook, sql, status, variable

testinfra_hosts = ["galera"]
BATCH1_SQL = ("SELECT COUNT(*), COALESCE(BIT_XOR(CRC32(CONCAT_WS('#', id, batch, v))), 0) "
              "FROM shop.orders WHERE batch = 1")


def backups(host, directory):
    """Backup directories (not .partial) under a directory of a node, with their manifests."""
    out = host.run(f"ls -1 {directory} 2>/dev/null")
    result = {}
    for name in out.stdout.split():
        path = f"{directory}/{name}"
        if host.file(path).is_directory:
            manifest = host.file(f"{path}/manifest.json")
            result[name] = json.loads(manifest.content_string) if manifest.exists else None
    return result


def test_cluster_whole_and_no_lease_after_the_runs(host):
    assert variable(host, "wsrep_desync") == "0"
    assert status(host, "wsrep_local_state_comment", "wsrep_cluster_size") == {
        "wsrep_local_state_comment": "Synced", "wsrep_cluster_size": "3"}
    assert sql(host, "SET SESSION wsrep_sync_wait = 1; SELECT COUNT(*) FROM dbtools_galera.desync_lease") == [["0"]]


@pytest.mark.parametrize("directory, method, compress, verify, main_file", [
    ("/var/backups/galera-mariabackup", "mariabackup", "zstd", "restore", "backup.xbstream.zst"),
    ("/var/backups/galera-directory", "mariabackup", "none", "prepare", "data/xtrabackup_checkpoints"),
    ("/var/backups/galera-mydumper", "mydumper", "zstd", "restore", "data/metadata"),
    ("/var/backups/galera-mysqldump", "mysqldump", "zstd", "restore", "dump.sql.zst"),
])
def test_each_method_made_one_verified_backup_with_a_valid_manifest(
        nodes, directory, method, compress, verify, main_file):
    found = {n.backend.get_pytest_id(): backups(n, directory) for n in nodes}
    found = {h: b for h, b in found.items() if b}
    assert len(found) == 1, f"expected backups on exactly one node, found {found}"
    (host_id, by_name), = found.items()
    assert len(by_name) == 1
    (name, manifest), = by_name.items()
    host = node(nodes, host_id.split("//")[-1])
    path = f"{directory}/{name}"
    assert manifest is not None, f"{path} has no manifest"
    assert manifest["result"] == "ok" and manifest["id"] == name
    assert manifest["method"] == method and manifest["compress"] == compress
    assert manifest["verify"]["level"] == verify and manifest["verify"]["result"] == "ok"
    assert manifest["cluster"]["name"] == "dbtools" and manifest["cluster"]["size"] == 3
    assert re.fullmatch(rf"dbtools_{manifest['node']}_[0-9]{{8}}T[0-9]{{6}}Z-[0-9a-f]{{8}}", name), name
    assert manifest["position"]["cluster_uuid"] == status(host, "wsrep_cluster_state_uuid")["wsrep_cluster_state_uuid"]
    assert isinstance(manifest["position"]["seqno"], int) and manifest["position"]["seqno"] > 0
    assert manifest["desync"]["flow_control_sent"] == 0
    assert manifest["tables"] >= 2 and manifest["bytes"] > 0
    assert host.file(f"{path}/{main_file}").exists
    # The recorded checksums still match the files, and the manifest's digest is the SHA256SUMS file's.
    check = host.run(f"cd {path} && sha256sum --quiet -c SHA256SUMS && sha256sum SHA256SUMS")
    assert check.rc == 0, check.stderr
    assert check.stdout.split()[0] == manifest["sha256"]
    # Private: files 0600, directories 0700, no partial or verification leftovers.
    modes = host.run(f"find {directory} -printf '%y %m %p\\n'").stdout.splitlines()
    assert all(line.split()[1] == ("700" if line.split()[0] == "d" else "600") for line in modes), modes
    assert not any(".partial" in line for line in modes)
    if verify == "restore":
        sums = manifest["verify"]["checksums"]
        assert sums["shop.customers"]["rows"] == 500
        assert {"shop.orders", "shop.customers"} <= set(sums)


def test_mariabackup_position_comes_from_its_galera_info(nodes):
    (name, manifest), = [item for n in nodes for item in backups(n, "/var/backups/galera-mariabackup").items()]
    assert manifest["position"]["source"] == "galera info file written by mariabackup"
    assert manifest["position"]["galera"].startswith(f"{manifest['position']['cluster_uuid']}:{manifest['position']['seqno']}")
    assert int(manifest["position"]["to_lsn"]) > 0
    # Batch 1 only: the backup was taken before batch 2 was written.
    assert manifest["verify"]["checksums"]["shop.orders"]["rows"] == 3000


def test_retention_keeps_the_newest_two_of_three(nodes):
    node3 = node(nodes, "galera-node3")
    kept = backups(node3, "/var/backups/galera-retention")
    assert len(kept) == 2, kept
    assert all(m and m["result"] == "ok" for m in kept.values())
    stamps = sorted(n.rsplit("_", 1)[1] for n in kept)
    assert stamps == sorted(stamps)
    for other in ("galera-node1", "galera-node2"):
        assert backups(node(nodes, other), "/var/backups/galera-retention") == {}


def run_backup_playbook(request, *extra):
    run = run_playbook(request, "dbtools.galera.backup", "-e", "galera_backup_sample_seconds=0.5", *extra)
    run.stdout = run.output
    return run


@pytest.mark.parametrize("directory, extra, expected", [
    # The destination cannot be written (a read-only filesystem): refused before any desync.
    ("/var/backups/readonly", [], "galera_backup_dir: /var/backups/readonly cannot be written: the filesystem is "
                                  "mounted read-only"),
    # The destination fills up during the backup (256 KiB; the free-space check is turned off):
    # the backup fails after the desync, and the node is resynced.
    ("/var/backups/tiny", ["-e", "galera_backup_free_space_factor=0"],
     "The backup of galera-node3 failed at \"Wait for the backup run"),
    # The free-space check refuses the same destination before any desync.
    ("/var/backups/tiny", [], "/var/backups/tiny has"),
])
def test_failing_backup_leaves_the_node_synced_and_keeps_nothing(request, nodes, directory, extra, expected):
    node3 = node(nodes, "galera-node3")
    fc_before = int(status(node3, "wsrep_flow_control_sent")["wsrep_flow_control_sent"])
    run = run_backup_playbook(request, "-e", f"galera_backup_dir={directory}", "-e", "galera_backup_node=galera-node3",
                              *extra)
    print(run.stdout[-3000:])
    assert run.returncode != 0
    assert expected in run.stdout
    if "failed at" in expected:
        assert "The node was resynced (Synced, wsrep_desync OFF); this run's partial backup was discarded" in run.stdout
        assert "No space left on device" in run.stdout
    else:
        assert "nothing was changed" in run.stdout.lower()
    assert int(status(node3, "wsrep_flow_control_sent")["wsrep_flow_control_sent"]) == fc_before
    assert variable(node3, "wsrep_desync") == "0"
    assert status(node3, "wsrep_local_state_comment")["wsrep_local_state_comment"] == "Synced"
    assert sql(node3, "SET SESSION wsrep_sync_wait = 1; SELECT COUNT(*) FROM dbtools_galera.desync_lease") == [["0"]]
    leftovers = node3.run(f"find {directory} -mindepth 1 -maxdepth 1 ! -name '*.failed.json'").stdout.split()
    assert leftovers == []
    option_files = node3.run("find /run/dbtools-galera /tmp -name client.cnf -o -name backup.key").stdout.split()
    assert option_files == [], f"option files with credentials were left behind: {option_files}"


def test_refused_when_the_chosen_node_is_not_in_the_play(request):
    run = run_backup_playbook(request, "-e", "galera_backup_node=no-such-node")
    assert run.returncode != 0
    assert "galera_backup_node=no-such-node is not a host of this play" in run.stdout


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=300)


def test_mariabackup_backup_restores_into_a_fresh_container(nodes):
    """Copy the backup off the node, restore it into a new container with wsrep off, and compare
    with the source: batch 1 (written before the backup) identical, batch 2 (after) absent."""
    owner = next(n for n in nodes if backups(n, "/var/backups/galera-mariabackup"))
    (name, manifest), = list(backups(owner, "/var/backups/galera-mariabackup").items())
    source_node = owner.backend.get_pytest_id().split("//")[-1]
    image = json.loads(docker("inspect", source_node).stdout)[0]["Config"]["Image"]
    fresh = f"dbtools-restore-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        docker("cp", f"{source_node}:/var/backups/galera-mariabackup/{name}", tmp)
        docker("run", "-d", "--name", fresh, "--network", "none", image)
        try:
            docker("cp", f"{tmp}/{name}", f"{fresh}:/root/backup")
            script = """
                set -e
                cd /root/backup && sha256sum --quiet -c SHA256SUMS
                rm -rf /var/lib/mysql && mkdir -p /var/lib/mysql
                zstd -dc backup.xbstream.zst | mbstream -x -C /var/lib/mysql
                mariabackup --prepare --target-dir=/var/lib/mysql > /root/prepare.log 2>&1
                chown -R mysql:mysql /var/lib/mysql
                install -d -o mysql -g mysql /run/mysqld
                setsid mariadbd --user=mysql --wsrep-on=OFF --wsrep-provider=none </dev/null >/root/restore.log 2>&1 &
                for i in $(seq 1 60); do mariadb -e 'SELECT 1' >/dev/null 2>&1 && exit 0; sleep 0.5; done
                exit 1
            """
            started = docker("exec", fresh, "bash", "-c", script, check=False)
            error_log = docker("exec", fresh, "tail", "-n", "30", "/var/log/mysql/error.log", check=False).stdout
            assert started.returncode == 0, started.stderr + error_log
            restored = testinfra.get_host(f"docker://{fresh}")
            source = node(nodes, "galera-node1")
            assert sql(restored, "SELECT @@wsrep_on") == [["0"]]
            assert sql(restored, BATCH1_SQL) == sql(source, BATCH1_SQL)
            assert sql(restored, "SELECT COUNT(*) FROM shop.orders WHERE batch = 2") == [["0"]]
            assert sql(source, "SELECT COUNT(*) FROM shop.orders WHERE batch = 2") == [["700"]]
            for table in ("shop.orders", "shop.customers"):
                recorded = manifest["verify"]["checksums"][table]["checksum"]
                assert sql(restored, f"CHECKSUM TABLE {table} EXTENDED")[0][1] == str(recorded)
            assert sql(restored, "CHECKSUM TABLE shop.customers EXTENDED")[0][1] == \
                sql(source, "CHECKSUM TABLE shop.customers EXTENDED")[0][1]
            galera_info = restored.file("/var/lib/mysql/xtrabackup_galera_info").content_string
            assert galera_info.startswith(f"{manifest['position']['cluster_uuid']}:{manifest['position']['seqno']}")
        finally:
            docker("rm", "-f", fresh, check=False)
