"""The three containers form one healthy Galera cluster that replicates writes."""

from __future__ import annotations

import uuid

from conftest import sql, status

testinfra_hosts = ["galera"]


def test_node_is_synced_member_of_full_primary_cluster(host):
    st = status(host, "wsrep_cluster_size", "wsrep_local_state_comment", "wsrep_cluster_status",
                "wsrep_ready", "wsrep_connected")
    assert st == {
        "wsrep_cluster_size": "3",
        "wsrep_local_state_comment": "Synced",
        "wsrep_cluster_status": "Primary",
        "wsrep_ready": "ON",
        "wsrep_connected": "ON",
    }


def test_all_nodes_share_one_cluster_state(nodes):
    uuids = {status(n, "wsrep_cluster_state_uuid")["wsrep_cluster_state_uuid"] for n in nodes}
    assert len(uuids) == 1, f"nodes disagree on the cluster state uuid: {uuids}"
    assert uuids != {"00000000-0000-0000-0000-000000000000"}


def test_row_written_on_node1_is_read_on_node3(nodes):
    node1, node3 = nodes[0], nodes[2]
    marker = uuid.uuid4().hex
    sql(node1, "CREATE DATABASE IF NOT EXISTS harness_check")
    sql(node1, "CREATE TABLE IF NOT EXISTS harness_check.t (id INT AUTO_INCREMENT PRIMARY KEY, v CHAR(32))")
    sql(node1, f"INSERT INTO harness_check.t (v) VALUES ('{marker}')")
    # wsrep_sync_wait makes the read wait until node3 has applied everything committed before it.
    rows = sql(node3, f"SET SESSION wsrep_sync_wait = 1; SELECT v FROM harness_check.t WHERE v = '{marker}'")
    assert rows == [[marker]]
    sql(node1, "DROP DATABASE harness_check")
