"""The main job (converge) backed up a node other than the writer, under load, without flow control."""

from __future__ import annotations

import json


def test_backup_of_a_non_writer_node_with_no_flow_control_while_desynced(nodes):
    found = []
    for node in nodes:
        listing = node.run("ls -1d /var/backups/galera/dbtools_* 2>/dev/null").stdout.split()
        for path in listing:
            manifest = node.file(f"{path}/manifest.json")
            if manifest.exists:
                found.append(json.loads(manifest.content_string))
    assert found, "the main job left no backup with a manifest"
    newest = max(found, key=lambda m: m["finished_at"])
    assert newest["result"] == "ok"
    assert newest["node"] != "galera-node1", "the writer galera-node1 was chosen for the backup"
    assert newest["verify"]["level"] == "prepare"
    assert newest["desync"]["flow_control_sent"] == 0
    assert newest["tables"] >= 4
