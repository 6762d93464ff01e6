# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The binlog archive's rules: reading binlog files, GTIDs, the PITR verdict, continuity across
node changes, gaps, retention, the node choice, the replay plan and the archive's freshness."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog, _catalog
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

from binlog_helpers import BASE_TIME, Writer, closed_file, real_n3

T = _binlog.utc_text


# ---------------------------------------------------------------------------------------------
# Reading binlog files

def test_a_real_mariadb_galera_binlog(tmp_path):
    info = _binlog.scan(real_n3(tmp_path / "mariadb-bin.000004"), 1)
    assert (info["first"], info["last"], info["count"]) == (1, 6, 6)
    assert info["first_gtid"] == "1-1-1" and info["last_gtid"] == "1-1-6"
    assert info["gtid_list"] == "" and info["start"] is None  # the node's first file after its SST
    assert info["others"] == {"13": [1, 1, 1]}  # the node-local write, never taken for the cluster's
    assert info["closed"] and info["closed_at"] == "2026-12-02T02:34:34Z"  # the Stop of a clean shutdown
    assert info["first_time"] == "2026-12-02T02:34:04Z" and info["last_time"] == "2026-12-02T02:34:17Z"
    assert info["checksum"] is True and info["truncated"] == 0 and not info["holes"]
    assert info["first_offset"] == 330  # the GTID event of 1-1-1 starts where the Binlog_checkpoint ends


def test_the_real_file_resumes_after_a_gtid_at_its_event_boundary(tmp_path):
    path = real_n3(tmp_path / "mariadb-bin.000004")
    info = _binlog.scan(path, 1, after=4)
    assert (info["offset"], info["offset_first"]) == (1041, 5)  # the end of 1-1-4's Xid event (end_log_pos 1041)
    assert _binlog.position_gtid(path, 1041) == "1-1-4"
    assert _binlog.position_gtid(path, 10 ** 9) == "1-1-6,13-3-1"


def test_groups_end_with_xid_commit_or_a_standalone_statement(tmp_path):
    writer = Writer().gtid_list({1: (1, 9)}).ddl(10)
    writer.gtid(11).query("BEGIN").query("INSERT INTO t.m VALUES (1)").query("COMMIT")  # a non-transactional table
    writer.trx(12).trx(5, domain=12, server=2).gtid(13).query("BEGIN").rows()  # 13: cut before its Xid
    info = _binlog.scan(writer.save(tmp_path / "f"), 1)
    assert (info["start"], info["first"], info["last"], info["count"]) == (9, 10, 12, 3)
    assert info["others"] == {"12": [5, 5, 1]} and not info["closed"]


def test_a_crash_cut_event_is_not_read(tmp_path):
    writer = Writer().gtid_list({}).trx(1).trx(2)
    complete = len(writer.data)
    writer.raw(b"\x00" * 11)  # half an event header
    info = _binlog.scan(writer.save(tmp_path / "f"), 1)
    assert info["last"] == 2 and info["end"] == complete and info["truncated"] == 11


def test_holes_and_disorder_inside_a_file(tmp_path):
    info = _binlog.scan(Writer().gtid_list({1: (1, 0)}).trx(1).trx(2).trx(5).trx(6).save(tmp_path / "a"), 1)
    assert info["holes"] == [[3, 4]]
    info = _binlog.scan(Writer().gtid_list({}).trx(3).trx(2).save(tmp_path / "b"), 1)
    assert info["disorder"] == [[3, 2]]


def test_limit_reads_the_active_file_as_far_as_written(tmp_path):
    writer = Writer().gtid_list({}).trx(1)
    cut = len(writer.data)
    writer.trx(2)
    assert _binlog.scan(writer.save(tmp_path / "f"), 1, limit=cut)["last"] == 1


@pytest.mark.parametrize("content, text", [
    (b"not a binlog", "not a binlog file"),
    (b"", "not a binlog file"),
])
def test_what_is_not_a_binlog_is_refused(tmp_path, content, text):
    path = tmp_path / "f"
    path.write_bytes(content)
    with pytest.raises(GaleraError, match=text):
        _binlog.scan(str(path), 1)


def test_an_encrypted_binlog_is_refused_with_the_fix(tmp_path):
    path = Writer().event(164, b"\x01" * 20).save(tmp_path / "f")
    with pytest.raises(GaleraError, match="encrypt_binlog=ON.*galera_backup_encrypt"):
        _binlog.scan(path, 1)


def test_a_missing_file_names_the_fix(tmp_path):
    with pytest.raises(GaleraError, match="run it as root"):
        _binlog.scan(str(tmp_path / "gone"), 1)


def test_without_checksums_too(tmp_path):
    info = _binlog.scan(Writer(checksum=False).gtid_list({1: (1, 4)}).trx(5).rotate().save(tmp_path / "f"), 1)
    assert (info["start"], info["last"], info["closed"], info["checksum"]) == (4, 5, True, False)


# ---------------------------------------------------------------------------------------------
# GTIDs and names

@pytest.mark.parametrize("text, expected", [
    ("1-1-10", {1: (1, 10)}),
    ("1-1-10,13-3-1", {1: (1, 10), 13: (3, 1)}),
    (" 1-1-10 ,\n13-3-1 ", {1: (1, 10), 13: (3, 1)}),
    ("", {}),
    (None, {}),
])
def test_gtid_positions(text, expected):
    assert _binlog.parse_gtid_list(text) == expected
    assert _binlog.parse_gtid_list(_binlog.format_gtid_list(expected)) == expected


@pytest.mark.parametrize("text", ["1-1", "a-b-c", "1-1-1,1-2-3", "$(id)", "1-1-1;DROP", "`x`", "1-1-1\n'"])
def test_bad_gtid_positions_raise(text):
    with pytest.raises(ValueError):
        _binlog.parse_gtid_list(text)
    assert _binlog.seq_of(text, 1) is None


def test_seq_of_the_cluster_domain():
    assert _binlog.seq_of("1-1-10,13-3-1", 1) == 10
    assert _binlog.seq_of("1-1-10,13-3-1", 13) == 1
    assert _binlog.seq_of("13-3-1", 1) is None


@pytest.mark.parametrize("node, file", [
    ("galera-node1", "mariadb-bin.000012"),
    ("$(touch /tmp/x)", "../../etc/passwd"),
    ("a'b`c\nd", "x y.000001"),
    ("..", "."),
])
def test_segment_names_stay_plain_and_parse(node, file):
    name = _binlog.segment_name(123, node, file, True, True)
    assert "/" not in name and " " not in name and "\n" not in name and name.endswith(".binlog.zst.enc")
    assert _binlog.is_segment_name(name) and _binlog.segment_first(name) == 123


@pytest.mark.parametrize("name", ["index.json", "prod_db1_20261201T000000Z-1a2b3c4d", "../00000000000000000001_a_b.binlog",
                                  "00000000000000000001_a_b.binlog/x", "0001_a.binlog", ".scan-n1.json", ""])
def test_other_names_are_not_segments(name):
    assert not _binlog.is_segment_name(name)


# ---------------------------------------------------------------------------------------------
# Preconditions

GOOD = dict(log_bin=True, log_slave_updates=True, binlog_format="ROW", wsrep_gtid_mode=True, wsrep_gtid_domain_id=1,
            gtid_domain_id=11, server_id=1, log_bin_basename="/var/lib/mysql/mariadb-bin", encrypt_binlog=False)


@pytest.mark.parametrize("change, missing, setting", [
    ({}, None, None),
    ({"log_bin": False}, "binary log is off", "log_bin = mariadb-bin"),
    ({"log_slave_updates": False}, "log_slave_updates", "log_slave_updates = ON"),
    ({"binlog_format": "MIXED"}, "not ROW", "binlog_format = ROW"),
    ({"wsrep_gtid_mode": False}, "wsrep_gtid_mode", "wsrep_gtid_mode = ON"),
    ({"gtid_domain_id": 1}, "gtid_domain_id equals", "gtid_domain_id = <a number"),
    ({"encrypt_binlog": True}, "encrypt_binlog", "encrypt_binlog = OFF"),
])
def test_node_settings_say_what_is_missing_and_what_to_add(change, missing, setting):
    verdict = _binlog.node_settings(dict(GOOD, **change))
    assert verdict["ready"] is (missing is None)
    if missing:
        assert any(missing in text for text in verdict["missing"])
        assert any(line.startswith(setting) for line in verdict["settings"])


def test_other_flavours_are_explained_not_archived():
    verdict = _binlog.node_settings(GOOD, "percona-xtradb-cluster")
    assert not verdict["ready"] and "gtid_mode=ON" in verdict["missing"][0]


def test_the_cluster_verdict_needs_one_domain_and_distinct_local_domains():
    nodes = {f"n{i}": _binlog.node_settings(dict(GOOD, gtid_domain_id=10 + i)) for i in (1, 2, 3)}
    verdict = _binlog.cluster_verdict(nodes)
    wanted = dict(ready=True, problems=[], domain=1, settings={})
    assert {k: verdict[k] for k in wanted} == wanted
    assert verdict["message"].startswith("point-in-time recovery is ready on n1, n2, n3")
    nodes["n2"] = _binlog.node_settings(dict(GOOD, gtid_domain_id=11, wsrep_gtid_domain_id=2))
    nodes["n4"] = None
    verdict = _binlog.cluster_verdict(nodes)
    assert not verdict["ready"] and verdict["domain"] is None
    text = " | ".join(verdict["problems"])
    assert "different wsrep_gtid_domain_id" in text and "gtid_domain_id 11 is set on n1, n2" in text
    assert "n4: its binlog settings could not be read" in text


def test_the_preflight_names_each_node_what_it_misses_and_the_settings_to_add():
    nodes = {"n1": _binlog.node_settings(dict(GOOD, gtid_domain_id=11)),
             "n2": _binlog.node_settings(dict(GOOD, gtid_domain_id=12, log_slave_updates="OFF", wsrep_gtid_mode="OFF"))}
    verdict = _binlog.cluster_verdict(nodes)
    assert not verdict["ready"] and verdict["settings"] == {"n2": ["log_slave_updates = ON", "wsrep_gtid_mode = ON"]}
    assert "n2: log_slave_updates is OFF" in verdict["message"] and "n2: wsrep_gtid_mode is OFF" in verdict["message"]
    assert "On n2 add under [mariadb] and restart: log_slave_updates = ON, wsrep_gtid_mode = ON" in verdict["message"]
    assert "n1:" not in verdict["message"]


# ---------------------------------------------------------------------------------------------
# Continuity across node changes

def index_with(*segments, start=None):
    index = _binlog.new_index("prod", "uuid-1", 1)
    return _binlog.add_segments(index, list(segments), "n1", None, "2026-12-02T00:00:00Z") if segments else \
        dict(index, start=start)


def seg(first, last, start=None, name=None, node="n1", kind="file", **extra):
    start = first - 1 if start is None else start
    return dict(kind=kind, node=node, file="f", start=start, first=first, last=last,
                name=name or _binlog.segment_name(first, node, "f", True, False),
                first_gtid=f"1-1-{first}", last_gtid=f"1-1-{last}", **extra)


def scans(tmp_path, node, *files):
    """``scan`` summaries of closed files, each (start, [seqs])."""
    out = []
    for number, (start, seqs) in enumerate(files, 1):
        path = closed_file(tmp_path / f"{node}-{number}", seqs, start)
        out.append(_binlog.scan(path, 1, after=None))
    return out


def rescan(infos, after):
    return [_binlog.scan(str(info_path), 1, after=after) for info_path in infos]


def test_the_first_run_archives_the_node_from_its_oldest_file(tmp_path):
    files = [closed_file(tmp_path / "a", [1, 2, 3], None), closed_file(tmp_path / "b", [4, 5], 3)]
    planned = _binlog.plan_files([_binlog.scan(f, 1) for f in files], _binlog.new_index("prod", "u", 1), "n1")
    assert [(s["start"], s["first"], s["last"]) for s in planned["segments"]] == [(0, 1, 3), (3, 4, 5)]
    assert not planned["hole"] and planned["through"] == T(BASE_TIME + 10000)


def test_the_same_node_continues_file_by_file(tmp_path):
    index = index_with(seg(1, 3))
    files = [closed_file(tmp_path / "a", [1, 2, 3], None), closed_file(tmp_path / "b", [4, 5], 3)]
    planned = _binlog.plan_files([_binlog.scan(f, 1, after=3) for f in files], index, "n1")
    assert planned["skipped"] == ["a"]
    assert [(s["start"], s["first"], s["last"], s["head_skipped"]) for s in planned["segments"]] == [(3, 4, 5, False)]


def test_a_new_node_s_overlapping_file_is_stored_with_its_skipped_head_marked(tmp_path):
    # n1 archived up to 7 and went down; n2's file holds 5..10 (its rotation points differ).
    index = index_with(seg(1, 7))
    path = closed_file(tmp_path / "n2", [5, 6, 7, 8, 9, 10], 4)
    info = _binlog.scan(path, 1, after=7)
    planned = _binlog.plan_files([info], index, "n2")
    (segment,) = planned["segments"]
    assert (segment["start"], segment["first"], segment["last"], segment["head_skipped"]) == (7, 8, 10, True)
    assert segment["offset"] == info["offset"] and segment["first_gtid"] == "1-1-8"
    assert segment["first_time"] == T(BASE_TIME + 8)
    # The replay starts at that offset: the event group of 1-1-8.
    assert _binlog.position_gtid(path, segment["offset"]) == "1-1-7"
    new = _binlog.add_segments(index, planned["segments"], "n2", planned["through"], "now")
    assert _binlog.check(new)["ok"] and new["last"] == 10 and new["node"] == "n2"


def test_a_node_whose_binlog_does_not_continue_stops_at_the_hole(tmp_path):
    index = index_with(seg(1, 7))
    info = _binlog.scan(closed_file(tmp_path / "n3", [12, 13], 11), 1, after=7)
    planned = _binlog.plan_files([info], index, "n3")
    assert planned["segments"] == [] and planned["hole"] == dict(first=8, last=11, file="n3")


def test_a_gap_proven_by_every_node_is_recorded_never_papered_over(tmp_path):
    index = index_with(seg(1, 7))
    info = _binlog.scan(closed_file(tmp_path / "n3", [12, 13], 11), 1, after=7)
    planned = _binlog.plan_files([info], index, "n3", allow_gap=dict(first=8, last=11), now="t")
    gap, file_segment = planned["segments"]
    assert (gap["kind"], gap["first"], gap["last"], gap["found_at"]) == ("gap", 8, 11, "t")
    assert (file_segment["start"], file_segment["first"]) == (11, 12)
    new = _binlog.add_segments(index, planned["segments"], "n3", None, "now")
    checked = _binlog.check(new)
    assert not checked["ok"] and checked["gaps"][0]["first"] == 8 and "1-1-8 .. 1-1-11" in checked["gaps"][0]["text"]


def test_a_gap_is_only_recorded_for_the_range_the_caller_proved(tmp_path):
    index = index_with(seg(1, 7))
    info = _binlog.scan(closed_file(tmp_path / "n3", [12, 13], 11), 1, after=7)
    planned = _binlog.plan_files([info], index, "n3", allow_gap=dict(first=8, last=9))  # not up to 11
    assert planned["segments"] == [] and planned["hole"]["last"] == 11


def test_a_file_without_cluster_writes_still_shows_a_break(tmp_path):
    index = index_with(seg(1, 7))
    quiet = Writer().gtid_list({1: (1, 11)}).trx(1, domain=13, server=3).rotate().save(tmp_path / "q")
    planned = _binlog.plan_files([_binlog.scan(quiet, 1, after=7)], index, "n3")
    assert planned["hole"] == dict(first=8, last=11, file="q")


def test_an_idle_cluster_moves_archived_through_without_segments(tmp_path):
    index = index_with(seg(1, 7))
    quiet = Writer().gtid_list({1: (1, 7)}).rotate(ts=BASE_TIME + 500).save(tmp_path / "q")
    planned = _binlog.plan_files([_binlog.scan(quiet, 1, after=7)], index, "n1")
    assert planned["segments"] == [] and planned["hole"] is None and planned["through"] == T(BASE_TIME + 500)
    new = _binlog.add_segments(index, [], "n1", planned["through"], "now")
    assert new["archived_through"] == T(BASE_TIME + 500) and new["last"] == 7


def test_a_hole_inside_a_file_stops_before_it(tmp_path):
    index = index_with(seg(1, 3))
    info = _binlog.scan(Writer().gtid_list({1: (1, 3)}).trx(4).trx(6).rotate().save(tmp_path / "h"), 1, after=3)
    planned = _binlog.plan_files([info], index, "n1")
    assert planned["segments"] == [] and planned["hole"] == dict(first=5, last=5, file="h")


def test_out_of_order_gtids_refuse_the_node(tmp_path):
    info = _binlog.scan(Writer().gtid_list({}).trx(3).trx(2).rotate().save(tmp_path / "d"), 1)
    with pytest.raises(GaleraError, match="out of order"):
        _binlog.plan_files([info], _binlog.new_index("prod", "u", 1), "n1")


@pytest.mark.parametrize("start, word", [(5, "repeat"), (9, "skip")])
def test_add_segments_refuses_what_would_skip_or_repeat(start, word):
    index = index_with(seg(1, 7))
    with pytest.raises(GaleraError, match=word):
        _binlog.add_segments(index, [seg(start + 1, 12, start=start)], "n2", None, "now")


def test_check_names_missing_files_holes_and_overlaps():
    index = index_with(seg(1, 7), seg(8, 10))
    checked = _binlog.check(index, present={seg(1, 7)["name"]})
    assert checked["missing"] == [seg(8, 10)["name"]]
    assert "GTID gap 1-1-8 .. 1-1-10" in checked["gaps"][0]["text"] and "missing" in checked["gaps"][0]["text"]
    broken = dict(index, segments=[seg(1, 7), seg(10, 12, start=9)])
    assert "1-1-8 .. 1-1-9" in _binlog.check(broken)["gaps"][0]["text"]
    overlapping = dict(index, segments=[seg(1, 7), seg(6, 12, start=5)])
    assert _binlog.check(overlapping)["gaps"][0]["reason"] == "overlap"


def test_indexes_of_other_clusters_are_refused():
    index = _binlog.new_index("prod", "uuid-1", 1)
    assert _binlog.check_index(index, "prod", "uuid-1", "x") is index
    assert _binlog.check_index(index, "prod", None, "x") is index
    for cluster, uuid in (("prod_east", "uuid-1"), ("prod", "uuid-2")):
        with pytest.raises(GaleraError, match="another cluster"):
            _binlog.check_index(index, cluster, uuid, "x")
    with pytest.raises(GaleraError, match="not a binlog archive index"):
        _binlog.check_index({"kind": "something"}, "prod", None, "x")


# ---------------------------------------------------------------------------------------------
# Retention

def backup(backup_id, gtid, cluster="prod"):
    return dict(id=backup_id, cluster=dict(name=cluster), position=dict(binlog=dict(gtid=gtid)))


def test_the_floor_is_the_oldest_backup_with_a_gtid_of_the_cluster_domain():
    backups = [backup("b1", "1-1-40,13-3-2"), backup("b2", "1-1-25"), backup("b3", ""), backup("b4", "12-2-1"),
               backup("other", "1-1-3", cluster="prod_east"), "junk"]
    assert _binlog.backup_floor(backups, "prod", 1) == dict(seq=25, id="b2", without=["b3", "b4"])
    assert _binlog.backup_floor([], "prod", 1)["seq"] is None


def test_retention_keeps_every_segment_a_kept_backup_needs():
    index = index_with(seg(1, 10), seg(11, 20), seg(21, 30))
    planned = _binlog.plan_retention(index, 20)  # a replay from the oldest backup starts at 21
    assert [s["first"] for s in planned["remove"]] == [1, 11] and planned["start"] == 20
    assert [s["first"] for s in _binlog.plan_retention(index, 15)["remove"]] == [1]  # 11..20 holds 16
    assert _binlog.plan_retention(index, None)["remove"] == []
    new = _binlog.apply_retention(index, _binlog.plan_retention(index, 20), "now")
    assert new["start"] == 20 and _binlog.check(new)["ok"] and new["revision"] == index["revision"] + 1


# ---------------------------------------------------------------------------------------------
# Which node archives

def probe(node, ranges, last=None, archived_by=None, healthy=True, ready=True, floor=None, revision=1):
    archive = None if last is None else dict(last=last, node=archived_by, revision=revision)
    return dict(probed=True, node=node, healthy=healthy, health=None if healthy else "not Synced (Joined)",
                settings=dict(ready=ready, missing=[] if ready else ["the binary log is off (log_bin)"]),
                coverage=ranges, archive=archive, oldest_backup=dict(seq=floor))


def test_coverage_follows_the_files_and_their_breaks(tmp_path):
    infos = [_binlog.scan(closed_file(tmp_path / "a", [1, 2, 3], None), 1),
             _binlog.scan(closed_file(tmp_path / "b", [4, 5], 3), 1),
             _binlog.scan(closed_file(tmp_path / "c", [9, 10], 8), 1)]  # after an SST
    assert _binlog.coverage(infos) == [[0, 5], [8, 10]]
    assert _binlog.covers([[0, 5], [8, 10]], 5) == 5 and _binlog.covers([[0, 5], [8, 10]], 6) is None
    assert _binlog.covers([[0, 5], [8, 10]], 8) == 10


def test_the_previous_node_continues_when_it_can():
    probes = {"h1": probe("n1", [[0, 20]], 15, "n1"), "h2": probe("n2", [[0, 30]], 15, "n1")}
    plan = _binlog.choose_node(probes, ["h1", "h2"])
    assert plan["ok"] and plan["node"] == "h1" and plan["gap"] is None


def test_when_the_archiving_node_is_down_another_takes_over():
    probes = {"h1": dict(probed=False, msg="cannot connect"), "h2": probe("n2", [[3, 30]], 15, "n1", floor=9),
              "h3": probe("n3", [[10, 25]], 15, "n1", floor=4)}
    plan = _binlog.choose_node(probes, ["h1", "h2", "h3"])
    assert plan["node"] == "h2" and "h1 cannot (cannot connect)" in plan["reason"]
    assert plan["refused"] == {"h1": "cannot connect"} and plan["keep_from"] == 4


def test_unhealthy_or_unready_nodes_are_never_chosen():
    probes = {"h1": probe("n1", [[0, 30]], 15, "n1", healthy=False), "h2": probe("n2", [[0, 30]], 15, "n1", ready=False),
              "h3": probe("n3", [[0, 30]], 15, "n1")}
    plan = _binlog.choose_node(probes, ["h1", "h2", "h3"])
    assert plan["node"] == "h3" and set(plan["refused"]) == {"h1", "h2"}
    assert "log_bin" in plan["refused"]["h2"]
    probes["h3"] = None
    plan = _binlog.choose_node(probes, ["h1", "h2", "h3"])
    assert not plan["ok"] and "no node can archive" in plan["reason"]


def test_nobody_holds_the_next_gtid_a_gap_is_named():
    probes = {"h1": probe("n1", [[40, 50]], 15, "n1"), "h2": probe("n2", [[30, 50]], 15, "n1")}
    plan = _binlog.choose_node(probes, ["h1", "h2"])
    assert plan["node"] == "h2" and plan["gap"] == dict(first=16, last=30) and "16..30" in plan["reason"]


def test_the_first_run_starts_where_the_binlogs_reach_furthest_back():
    probes = {"h1": probe("n1", [[40, 50]]), "h2": probe("n2", [[3, 50]])}
    assert _binlog.choose_node(probes, ["h1", "h2"])["node"] == "h2"


def test_the_first_run_never_starts_on_a_node_whose_binlogs_break_before_the_present():
    # CI, pitr scenario: galera-node1's binlogs reached furthest back but missed two GTIDs; the first run chose it,
    # could archive nothing (the file holding the break is not archived) and the archive started a run later.
    probes = {"h1": probe("n1", [[3, 20], [22, 50]]), "h2": probe("n2", [[10, 50]])}
    plan = _binlog.choose_node(probes, ["h1", "h2"])
    assert plan["node"] == "h2" and plan["reason"].endswith("without a break")


# ---------------------------------------------------------------------------------------------
# Sequence numbers no node binlogged (a TOI DDL that failed or changed nothing)
# CI, pitr scenario: every node's binlog skipped 48612..48613 inside one file; the archive stopped there on every
# run (0 segments) and the restore found an empty archive.

def test_history_holes_are_inside_files_or_between_files_whose_gtid_list_continues(tmp_path):
    infos = [_binlog.scan(closed_file(tmp_path / "a", [1, 2, 4], None), 1),      # 3 inside a file
             _binlog.scan(closed_file(tmp_path / "b", [7, 8], 4), 1),            # 5..6 between files, state at 4
             _binlog.scan(closed_file(tmp_path / "c", [20, 21], 15), 1)]         # a jump of the state: an SST
    assert _binlog.history_holes(infos) == [[3, 3], [5, 6]]


def test_a_hole_every_node_shows_and_none_holds_is_unlogged():
    holes = {"h1": [[21, 22]], "h2": [[21, 22]], "h3": []}
    ranges = {"h1": [[0, 20], [22, 50]], "h2": [[5, 20], [22, 50]], "h3": [[30, 50]]}  # h3: filled by SST after it
    assert _binlog.unlogged_ranges(holes, ranges) == [dict(first=21, last=22)]
    assert _binlog.unlogged_ranges(holes, ranges, after=22) == []  # archived past it already


@pytest.mark.parametrize("holes, ranges", [
    # one node only: its own sql_log_bin=0 write (binlogged by nodes that are down now) is not proven unlogged
    ({"h1": [[21, 22]]}, {"h1": [[0, 20], [22, 50]]}),
    # another node binlogged 22: the cluster wrote it, a restore needs it
    ({"h1": [[21, 22]], "h2": [[21, 22]]}, {"h1": [[0, 20], [22, 50]], "h2": [[0, 20], [22, 50]], "h3": [[21, 22]]}),
    # not the same hole on the two nodes
    ({"h1": [[21, 22]], "h2": [[21, 21]]}, {"h1": [[0, 20], [22, 50]], "h2": [[0, 20], [21, 50]]}),
])
def test_a_hole_without_proof_stays_a_break(holes, ranges):
    assert _binlog.unlogged_ranges(holes, ranges) == []


def holed_probe(node, ranges, holes, last=None, archived_by=None):
    return dict(probe(node, ranges, last, archived_by), holes=holes)


def test_the_choice_goes_on_across_what_no_node_binlogged():
    probes = {"h1": holed_probe("n1", [[0, 20], [22, 50]], [[21, 22]]),
              "h2": holed_probe("n2", [[10, 20], [22, 50]], [[21, 22]])}
    plan = _binlog.choose_node(probes, ["h1", "h2"])
    assert plan["node"] == "h1" and plan["unlogged"] == [dict(first=21, last=22)] and "21..22" in plan["reason"]
    plan = _binlog.choose_node({h: dict(p, archive=dict(last=15, node="n9", revision=1)) for h, p in probes.items()},
                               ["h1", "h2"])
    assert plan["node"] == "h1" and plan["gap"] is None  # h1 reaches 50 across 21..22


def test_the_archive_goes_on_across_an_unlogged_hole_inside_a_file_and_records_it(tmp_path):
    index = index_with(seg(1, 3))
    info = _binlog.scan(Writer().gtid_list({1: (1, 3)}).trx(4).trx(7).trx(8).rotate().save(tmp_path / "h"), 1,
                        after=3)
    stopped = _binlog.plan_files([info], index, "n1", unlogged=[dict(first=5, last=5)])  # not all of 5..6
    assert stopped["segments"] == [] and stopped["hole"] == dict(first=5, last=6, file="h")
    planned = _binlog.plan_files([info], index, "n1", unlogged=[dict(first=5, last=6)])
    (segment,) = planned["segments"]
    assert (segment["start"], segment["first"], segment["last"], segment["unlogged"]) == (3, 4, 8, [dict(first=5, last=6)])
    new = _binlog.add_segments(index, planned["segments"], "n1", None, "now")
    assert _binlog.check(new)["ok"] and new["last"] == 8


def test_the_archive_goes_on_across_an_unlogged_hole_between_files(tmp_path):
    index = index_with(seg(1, 3))
    info = _binlog.scan(closed_file(tmp_path / "b", [6, 7], 3), 1, after=3)  # 4..5 were given, never binlogged
    assert _binlog.plan_files([info], index, "n1")["hole"] == dict(first=4, last=5, file="b")
    planned = _binlog.plan_files([info], index, "n1", unlogged=[dict(first=4, last=5)])
    (segment,) = planned["segments"]
    assert (segment["start"], segment["first"], segment["unlogged"]) == (3, 6, [dict(first=4, last=5)])
    new = _binlog.add_segments(index, planned["segments"], "n1", None, "now")
    assert _binlog.check(new)["ok"]
    # the same segment without its record is a hole a restore refuses
    assert not _binlog.check(dict(new, segments=[seg(1, 3), dict(segment, unlogged=[])]))["ok"]


def test_the_first_run_starts_where_the_node_s_unbroken_history_begins(tmp_path):
    # CI, pitr scenario: the chosen node kept an older file with a hole only it showed (the other nodes' copies of
    # those GTIDs were purged); the first run began at its oldest file, stopped at the hole and archived nothing.
    paths = [closed_file(tmp_path / "a", [1, 2, 3], None),
             Writer().gtid_list({1: (1, 3)}).trx(4).trx(7).trx(8).rotate().save(tmp_path / "b"),
             closed_file(tmp_path / "c", [9, 10], 8)]
    infos = [_binlog.scan(p, 1) for p in paths]
    assert _binlog.unbroken_from(infos) == 6 and _binlog.unbroken_from(infos, [dict(first=5, last=6)]) == 0
    index = _binlog.new_index("prod", "u", 1)
    assert _binlog.plan_files(infos, index, "n1")["hole"] == dict(first=5, last=6, file="b")  # from the oldest file
    planned = _binlog.plan_files([_binlog.scan(p, 1, after=6) for p in paths], index, "n1", after=6)
    assert planned["skipped"] == ["a"] and planned["hole"] is None
    assert [(s["start"], s["first"], s["last"], s["head_skipped"]) for s in planned["segments"]] == [
        (6, 7, 8, True), (8, 9, 10, False)]
    new = _binlog.add_segments(index, planned["segments"], "n1", None, "now")
    assert new["start"] == 6 and _binlog.check(new)["ok"]


def test_a_replay_goes_across_unlogged_numbers_and_a_stop_inside_them_ends_before(tmp_path):
    index = archive(timed(1, 10), timed(13, 20, start=10, unlogged=[dict(first=11, last=12)]))
    plan = _binlog.replay_plan(index, "1-1-5")
    assert plan["files"] == [timed(1, 10)["name"], timed(13, 20, start=10)["name"]] and plan["stop"] == 20
    assert [s["skip_through"] for s in plan["segments"]] == [5, 10]
    plan = _binlog.replay_plan(index, "1-1-5", stop_gtid="1-1-12")
    assert plan["stop"] == 10 and plan["files"] == [timed(1, 10)["name"]]


def test_the_newest_catalogue_state_any_node_read_wins():
    probes = {"h1": probe("n1", [[0, 50]], 10, "n1", revision=3), "h2": probe("n2", [[0, 50]], 20, "n2", revision=4)}
    plan = _binlog.choose_node(probes, ["h1", "h2"])
    assert plan["cursor"] == 20 and plan["node"] == "h2"


# ---------------------------------------------------------------------------------------------
# The replay plan (what the restore to a point asks)

def timed(first, last, start=None, **extra):
    return seg(first, last, start, first_time=T(BASE_TIME + first), last_time=T(BASE_TIME + last), sha256="0" * 64,
               **extra)


def archive(*segments, through=BASE_TIME + 100):
    index = index_with(*segments)
    return dict(index, archived_through=T(through))


def test_replay_from_a_backup_inside_a_segment_to_the_end():
    index = archive(timed(1, 10), timed(11, 20, node="n2"), timed(21, 30))
    plan = _binlog.replay_plan(index, "1-1-15,13-3-2")
    assert plan["files"] == [timed(11, 20, node="n2")["name"], timed(21, 30)["name"]]
    assert [(s["skip_through"], s["stop"]) for s in plan["segments"]] == [(15, 20), (20, 30)]
    assert plan["first_gtid"] == "1-1-16" and plan["last_gtid"] == "1-1-30" and plan["stop"] == 30


def test_replay_to_a_gtid_and_to_a_time():
    index = archive(timed(1, 10), timed(11, 20), timed(21, 30))
    plan = _binlog.replay_plan(index, 5, stop_gtid="1-1-12")
    assert [(s["first"], s["skip_through"], s["stop"]) for s in plan["segments"]] == [(1, 5, 10), (11, 10, 12)]
    plan = _binlog.replay_plan(index, 5, stop_time=T(BASE_TIME + 15))
    assert [s["first"] for s in plan["segments"]] == [1, 11] and plan["stop"] is None
    assert plan["stop_time"] == T(BASE_TIME + 15)


def test_replay_refuses_a_recorded_gap_naming_it():
    index = archive(timed(1, 10), dict(_binlog.gap_segment(1, 11, 14, "n3"), reason="purged"), timed(15, 30, start=14))
    with pytest.raises(GaleraError, match=r"GTID gap 1-\?-11 \.\. 1-\?-14 \(purged\)") as info:
        _binlog.replay_plan(index, 5)
    assert info.value.get("gap") == dict(first=11, last=14, domain=1, reason="purged")
    # Before the gap, and from a backup after it, replay works.
    assert _binlog.replay_plan(index, 5, stop_gtid="1-1-10")["files"] == [timed(1, 10)["name"]]
    assert _binlog.replay_plan(index, 14)["files"] == [timed(15, 30, start=14)["name"]]


def test_replay_refuses_a_missing_file_naming_its_range():
    index = archive(timed(1, 10), timed(11, 20), timed(21, 30))
    present = {timed(1, 10)["name"], timed(21, 30)["name"]}
    with pytest.raises(GaleraError, match=r"GTID gap 1-\?-11 \.\. 1-\?-20 \(archived file .* is missing\)"):
        _binlog.replay_plan(index, 5, present=present)
    assert _binlog.replay_plan(index, 5, stop_gtid=9, present=present)["files"] == [timed(1, 10)["name"]]


@pytest.mark.parametrize("start, kwargs, text", [
    (0, {}, "begins after the backup"),
    (12, {"stop_gtid": "1-1-99"}, "not archived yet"),
    (12, {"stop_gtid": "1-1-11"}, "before the backup"),
    (12, {"stop_time": T(BASE_TIME + 10 ** 6)}, "not up to"),
    (12, {"stop_time": "yesterday"}, "not an ISO 8601"),
    ("13-3-1", {}, "no GTID of the cluster domain"),
    ("garbage", {}, "no GTID of the cluster domain"),
    (12, {"stop_gtid": "2-1-20"}, "not a GTID of the cluster domain"),
])
def test_replay_refuses_what_the_archive_cannot_give(start, kwargs, text):
    index = archive(timed(6, 10, start=5), timed(11, 20))
    with pytest.raises(GaleraError, match=text):
        _binlog.replay_plan(index, start, **kwargs)


def test_replay_of_an_empty_archive_is_refused():
    with pytest.raises(GaleraError, match="empty"):
        _binlog.replay_plan(_binlog.new_index("prod", "u", 1), 5)


# ---------------------------------------------------------------------------------------------
# Freshness of the archive (monitoring)

def read(index, files):
    return dict(archives={"prod": dict(index=index, files=sorted(files))}, problems=[])


NOW = datetime.fromtimestamp(BASE_TIME + 160, timezone.utc)


def test_freshness_ok_lag_and_gap():
    index = archive(timed(1, 10), timed(11, 20, node="n2"))
    names = [s["name"] for s in index["segments"]]
    verdict = _catalog.archive_freshness({"h1": read(index, names[:1]), "h2": read(index, names[1:])}, now=NOW,
                                         max_lag=300, fail_on=["archive_lag", "archive_gap"])
    assert verdict["summary"].startswith("OK: cluster prod binlog archive up to 1-1-20") and "lag 60 s" in verdict["summary"]
    late = _catalog.archive_freshness({"h1": read(index, names)}, now=NOW, max_lag=30, fail_on=["archive_lag"])
    assert late["failing"] == ["archive_lag"] and late["summary"].startswith("CRITICAL") and "TOO OLD" in late["summary"]
    gone = _catalog.archive_freshness({"h1": read(index, names[:1]), "h2": read(index, [])}, now=NOW, max_lag=300,
                                      fail_on=["archive_lag", "archive_gap"])
    assert gone["failing"] == ["archive_gap"] and "GTID gap 1-1-11 .. 1-1-20" in gone["summary"]


def test_freshness_with_a_silent_node_warns_instead_of_claiming_a_gap():
    index = archive(timed(1, 10), timed(11, 20, node="n2"))
    names = [s["name"] for s in index["segments"]]
    verdict = _catalog.archive_freshness({"h1": read(index, names[:1]), "h2": None}, now=NOW, max_lag=300,
                                         fail_on=["archive_lag", "archive_gap"])
    assert verdict["failing"] == [] and verdict["summary"].startswith("WARNING") and "h2" in verdict["summary"]


def test_freshness_takes_the_newest_index_and_reports_none_found():
    old = archive(timed(1, 10))
    new = archive(timed(1, 10), timed(11, 20))
    names = [s["name"] for s in new["segments"]]
    verdict = _catalog.archive_freshness({"h1": read(old, names), "h2": read(new, [])}, now=NOW)
    assert verdict["clusters"]["prod"]["index"]["last"] == 20 and verdict["summary"].startswith("OK")
    nothing = _catalog.archive_freshness({"h1": dict(archives={}, problems=[])}, now=NOW, fail_on=["no_archive"])
    assert nothing["failing"] == ["no_archive"] and "no binlog archive found" in nothing["summary"]


# ---------------------------------------------------------------------------------------------
# The replay of one file (restore to a point) and galera_restore_until

def test_replay_range_stops_at_a_gtid_and_skips_other_domains_and_the_head(tmp_path):
    writer = Writer().gtid_list({1: (1, 4)})
    for seq in (5, 6):
        writer.trx(seq)
    writer.trx(1, domain=13, server=3)  # a node-local write: never applied
    for seq in (7, 8, 9):
        writer.trx(seq)
    path = writer.rotate().save(tmp_path / "b")
    span = _binlog.replay_range(path, 1, after=5, stop=8)
    info = _binlog.scan(path, 1, after=5)
    assert span["start"] == info["offset"] and (span["first"], span["last"], span["count"]) == (6, 8, 3)
    assert span["reached"] and span["stop"] < os.path.getsize(path)
    whole = _binlog.replay_range(path, 1, after=4)
    assert (whole["first"], whole["last"], whole["count"], whole["reached"]) == (5, 9, 5, False)
    assert _binlog.replay_range(path, 1, after=9)["count"] == 0


def test_replay_range_stops_at_a_time(tmp_path):
    path = closed_file(tmp_path / "b", [1, 2, 3, 4], 0)
    span = _binlog.replay_range(path, 1, after=0, stop_time=T(BASE_TIME + 2))
    assert (span["last"], span["count"], span["reached"]) == (2, 2, True)
    assert span["last_time"] == T(BASE_TIME + 2)
    with pytest.raises(GaleraError, match="not an ISO 8601"):
        _binlog.replay_range(path, 1, after=0, stop_time="soon")


@pytest.mark.parametrize("text, expected", [
    ("latest", dict(stop_gtid=None, stop_time=None)),
    ("1-1-4711", dict(stop_gtid="1-1-4711", stop_time=None)),
    ("2026-12-02T10:15:00Z", dict(stop_gtid=None, stop_time="2026-12-02T10:15:00Z")),
    ("2026-12-02 11:15:00+01:00", dict(stop_gtid=None, stop_time="2026-12-02T10:15:00Z")),
])
def test_until_is_latest_a_gtid_or_a_time(text, expected):
    assert {k: v for k, v in _binlog.parse_until(text).items() if k != "text"} == expected


@pytest.mark.parametrize("text", ["", "yesterday", "1-1", "2026", "1-1-1; DROP DATABASE x", "12:00"])
def test_until_refuses_anything_else(text):
    with pytest.raises(ValueError):
        _binlog.parse_until(text)


# ---------------------------------------------------------------------------------------------
# The backup's manifest records the GTID position a replay starts after

def test_the_backup_position_gets_its_gtid_from_the_tool_or_from_the_binlog_file(tmp_path):
    from ansible_collections.dbtools.galera.plugins.module_utils import _backup_job

    real_n3(tmp_path / "mariadb-bin.000004")
    run = dict(tool="mariabackup", pitr=dict(ready=True, domain=1, dir=str(tmp_path)))
    # mariabackup on a node whose server_id is not the GTIDs' writes file and offset only: computed.
    out = _backup_job.binlog_position(run, dict(file="mariadb-bin.000004", position=1041, gtid=None))
    assert out["gtid"] == "1-1-4" and out["cluster_seqno"] == 4 and out["gtid_source"].startswith("computed from")
    # The tool's own GTID is kept as it is.
    out = _backup_job.binlog_position(dict(run, tool="mysqldump"), dict(file="x.000001", position=4, gtid="1-1-9,13-3-1"))
    assert (out["gtid"], out["cluster_seqno"], out["gtid_source"]) == ("1-1-9,13-3-1", 9, "mysqldump")
    # A file that is gone leaves the GTID unknown, said so, and never fails the backup.
    out = _backup_job.binlog_position(run, dict(file="mariadb-bin.000009", position=1041))
    assert out.get("gtid") is None and out["gtid_source"].startswith("unknown") and out["cluster_seqno"] is None
    # A hostile file name cannot leave the binlog directory.
    out = _backup_job.binlog_position(run, dict(file="../../etc/passwd", position=10))
    assert out.get("gtid") is None and "passwd" in out["gtid_source"]
    assert _backup_job.binlog_position(run, None) is None


def test_a_backup_says_whether_it_can_start_a_point_in_time_recovery():
    from ansible_collections.dbtools.galera.plugins.module_utils import _backup_job

    checks = []
    ready = _backup_job.pitr_check(dict(binlog=_binlog.node_settings(dict(GOOD))), True, checks)
    assert ready["ready"] and ready["domain"] == 1 and ready["dir"] == "/var/lib/mysql" and "cluster domain 1" in checks[-1]
    off = _backup_job.pitr_check(dict(binlog=_binlog.node_settings(dict(GOOD, log_bin=False))), False, checks)
    assert not off["ready"] and "cannot start a point-in-time recovery" in checks[-1] and "log_bin" in checks[-1]


def test_a_replay_to_a_gtid_goes_through_every_segment_up_to_it(tmp_path):
    index = archive(timed(1, 10), timed(11, 20), timed(21, 30))
    plan = _binlog.replay_plan(index, 5, stop_gtid="1-1-25")
    first = closed_file(tmp_path / "a", range(1, 11), 0)
    span = _binlog.replay_range(first, 1, plan["segments"][0]["skip_through"], plan["segments"][0]["stop"])
    assert span["reached"] and span["last"] == 10
    assert not _binlog.replay_done(plan, span, span["last"])  # the first segment's end is not the target
    assert _binlog.replay_done(plan, dict(reached=True), 25) and not _binlog.replay_done(plan, dict(reached=False), 20)
    timed_plan = _binlog.replay_plan(index, 5, stop_time=T(BASE_TIME + 15))
    assert _binlog.replay_done(timed_plan, dict(reached=True), 15)
    assert not _binlog.replay_done(timed_plan, dict(reached=False), 10)


def test_the_archive_filter_adds_the_preflight_of_the_nodes_that_answered():
    from ansible_collections.dbtools.galera.plugins.filter.binlog_archive import binlog_archive_node

    good = probe("n1", [[0, 20]], 15, "n1")
    bad = dict(probe("n2", [[0, 20]], 15, "n1"),
               settings=_binlog.node_settings(dict(GOOD, gtid_domain_id=1)))
    plan = binlog_archive_node({"h1": dict(good, settings=_binlog.node_settings(dict(GOOD))), "h2": bad,
                                "h3": dict(probed=False, msg="cannot connect")}, ["h1", "h2", "h3"], owner="o")
    assert plan["owner"] == "o" and not plan["preflight"]["ready"]
    assert "h2: gtid_domain_id equals wsrep_gtid_domain_id" in plan["preflight"]["message"]
    assert "h3" not in plan["preflight"]["message"]  # a node that is down is named by the choice, not here


@pytest.mark.parametrize("line, kept", [
    ("/*M!100001 SET @@session.server_id=1*//*!*/;\n", False),
    ("/*!100001 SET @@SESSION.SERVER_ID=@@GLOBAL.SERVER_ID */;\n", False),
    ("/*M!100001 SET @@session.gtid_seq_no=5*//*!*/;\n", True),
    ("INSERT INTO t VALUES ('/*M!100001 SET @@session.server_id=1*//*!*/;')\n", True),
    ("BINLOG '\n", True),
])
def test_the_replay_leaves_out_only_the_server_id_statements(line, kept):
    assert _binlog.replay_keeps(line) is kept
