"""Point-in-time recovery: the archive runs (node takeover by GTID, the lease), the restore to a time between two
markers, the gap refusal and the CRITICAL archive check, read from the nodes and from what the converge recorded."""

from __future__ import annotations

import json
import os

import pytest

from conftest import sql, status

testinfra_hosts = ["galera"]


@pytest.fixture(scope="module")
def results():
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "pitr", "results.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_three_members_synced_in_one_primary_component(nodes):
    uuids = set()
    for host in nodes:
        got = status(host, "wsrep_cluster_size", "wsrep_local_state_comment", "wsrep_cluster_status",
                     "wsrep_cluster_state_uuid")
        assert got["wsrep_cluster_size"] == "3" and got["wsrep_local_state_comment"] == "Synced"
        assert got["wsrep_cluster_status"] == "Primary"
        uuids.add(got["wsrep_cluster_state_uuid"])
    assert len(uuids) == 1


def test_every_marker_up_to_the_target_is_back_and_none_after_it_on_every_node(results):
    assert results["markers_before"].split("\t")[0] == "1,2,3,4,5,6,7"
    assert results["markers_after"] == {host: "1,2,3,4,5" for host in results["markers_after"]}
    assert len(results["markers_after"]) == 3


def test_a_restore_to_latest_brings_back_every_archived_marker_on_every_node(nodes, results):
    # The same backup, the whole archive replayed: the cluster as it was when the third run archived.
    assert results["markers_latest"] == {host: "1,2,3,4,5,6,7" for host in results["markers_latest"]}
    assert len(results["markers_latest"]) == 3
    latest, third = results["replay_latest"], results["runs"][2]["result"]
    assert latest["last"] == third["index"]["last"] and latest["applied"] > results["replay"]["applied"]
    for host in nodes:
        assert sql(host, "SELECT GROUP_CONCAT(id ORDER BY id) FROM pitr.markers") == [["1,2,3,4,5,6,7"]]


def test_the_replay_started_at_the_backups_gtid_and_stopped_at_the_target_time(results):
    backup = results["plan"]["backup"]
    gtid = backup["position"]["binlog_gtid"]
    assert gtid and results["replay"]["plan"]["start"] == int(
        next(p for p in gtid.split(",") if p.startswith(f"{results['replay']['plan']['domain']}-")).split("-")[2])
    replay = results["replay"]
    assert replay["until"] == results["until"] and replay["applied"] > 0
    assert replay["last_time"] <= results["until"]
    # Markers 3 and 4 were archived by another node than 1 and 2: the replay crossed the takeover.
    assert len(replay["plan"]["files"]) >= 2


def test_the_checksums_of_every_table_are_equal_on_every_node(nodes):
    figures = set()
    for host in nodes:
        rows = sql(host, "CHECKSUM TABLE pitr.markers, pitr.sbtest1 EXTENDED")
        figures.add(tuple(tuple(r) for r in rows))
    assert len(figures) == 1


def test_another_node_continued_the_archive_by_gtid_when_the_archiving_node_was_down(results):
    first, second, third = results["runs"]
    assert second["plan"]["node"] != first["plan"]["node"]
    assert first["plan"]["node"] in second["plan"]["refused"]
    for run in results["runs"]:
        assert run["result"]["gap"] is None and run["result"]["gaps"] == []
    # Each run continued exactly at the cursor the previous one left.
    assert second["plan"]["cursor"] == first["result"]["index"]["last"]
    assert third["plan"]["cursor"] == second["result"]["index"]["last"]
    assert [s for s in second["result"]["archived"] if s["kind"] == "file"]


def test_the_archive_and_the_replay_went_across_the_gtids_no_node_binlogged(results):
    # The converge ran a DDL that changed nothing before the first run and one that failed before the second: each
    # took a cluster GTID that no node binlogged. Each run proved it from two nodes or more and went on across it.
    first, second, _third = results["runs"]
    for run in (first, second):
        assert run["plan"]["unlogged"], run["plan"]["reason"]
        assert run["result"]["unlogged"] and run["result"]["hole"] is None
        assert "no node binlogged the sequence numbers" in run["plan"]["reason"]
    # The first run also crosses what earlier scenarios' DDL left before the backup; the converge's two lie after
    # the backup's position and before marker 5, so the replay to the target went across them.
    replay = results["replay"]
    crossed = [u for u in first["result"]["unlogged"] + second["result"]["unlogged"]
               if u["first"] > replay["plan"]["start"]]
    assert len(crossed) >= 2 and all(u["last"] < replay["last"] for u in crossed), crossed


def test_a_second_archiver_was_refused_by_the_lease(results):
    refused = results["second_archiver"]
    assert refused.get("failed_when_result") is False and refused.get("conflict") is True
    assert "the binlog archive lease is taken" in refused["msg"] and "other-archiver" in refused["msg"]


def test_a_removed_archived_file_makes_the_replay_refuse_naming_the_gtid_gap(results):
    refusal = results["gap_refusal"]
    assert "GTID gap" in refusal["msg"] and "is missing" in refusal["msg"]
    removed = [s for s in results["runs"][1]["result"]["archived"] if s["kind"] == "file"][0]
    assert f"{removed['first']}" in refusal["msg"] and removed["name"] in refusal["msg"]


def test_the_archive_check_went_critical_on_the_gap(results):
    freshness = results["freshness"]
    assert freshness["failing"] == ["archive_gap"] and freshness["summary"].startswith("CRITICAL")
    assert "GTID gap" in freshness["summary"]
