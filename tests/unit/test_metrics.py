"""Prometheus metrics of the backup runs (_metrics): rendering, parsing back, merging with the
previous file, the atomic writer, and the shipped alert rules and dashboard checked with promtool.

promtool comes with Debian's ``prometheus`` package; without it those tests are skipped (and fail
under CI=true, where the test setup installs it)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from ansible_collections.dbtools.galera.plugins.module_utils import _metrics
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs", "prometheus")
NOW = datetime(2026, 12, 1, 6, 0, 0, tzinfo=timezone.utc)
UUID = "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"
CLUSTER = "prod"
NODE = "db3"
P = _metrics.PREFIX
HOSTILE = ['pr"od', "pr\\od", "pr\nod", "$(touch /tmp/pwned)", "`id`", "../../etc", "prod_east", "a/b",
           "{cluster=\"x\"}", "ünï cödé", "bad\udcffsurrogate", "'; DROP TABLE t; --", "\\\"\n\\n", ".", ".."]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def manifest(hours_ago: float = 1.0, cluster=CLUSTER, node=NODE, uuid=UUID, kind="full", parent=None,
             run="0123abcd", **extra) -> dict:
    finished = NOW - timedelta(hours=hours_ago)
    backup_id = f"{_metrics._manifest.sanitize(cluster)}_{node}_{finished.strftime('%Y%m%dT%H%M%SZ')}-{run}"
    m = dict(format=1, id=backup_id, run_id=run, result="ok", type=kind, parent=parent,
             chain=None if kind != "full" else [backup_id], method="mariabackup", node=node, wsrep_node_name=node,
             cluster=dict(name=cluster, state_uuid=uuid), started_at=iso(finished - timedelta(minutes=10)),
             finished_at=iso(finished), duration_seconds=600.0, bytes=123456789,
             verify=dict(level="checksum", result="ok"),
             desync=dict(flow_control_sent=0, max_recv_queue_seen=12, drain_seconds=1.5, sync_seconds=0.25))
    m.update(extra)
    return m


def failure(hours_ago: float = 0.5, step="Wait for the backup run (the watchdog renews the lease while it runs)",
            cluster=CLUSTER, node=NODE, **extra) -> dict:
    failed = NOW - timedelta(hours=hours_ago)
    record = dict(format=1, id=f"{cluster}_{node}_{failed.strftime('%Y%m%dT%H%M%SZ')}-feedf00d", run_id="feedf00d",
                  result="failed", error="mariabackup exited 1", step=step, method="mariabackup", node=node,
                  wsrep_node_name=node, cluster=dict(name=cluster, state_uuid=UUID),
                  started_at=iso(failed - timedelta(minutes=3)), failed_at=iso(failed), resynced=True)
    record.update(extra)
    return record


def samples_of(text: str, cluster=CLUSTER, node=NODE) -> dict:
    samples, problems = _metrics.parse(text, cluster, node)
    assert problems == [], problems
    return samples


def value(samples: dict, name: str, **labels):
    family = samples.get(P + name, {})
    return family.get(tuple(labels.items()))


def promtool():
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: the test setup must run "
                        "'apt-get install -y --no-install-recommends prometheus prometheus-node-exporter'")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


# ---------------------------------------------------------------------------------------------
# Rendering a run

def test_good_run_gives_every_figure():
    m = manifest(hours_ago=1)
    desync = dict(changed=True, lease=dict(acquired_at=(NOW - timedelta(hours=1, minutes=9)).strftime("%Y-%m-%d %H:%M:%S")))
    text = _metrics.render(CLUSTER, NODE, result=m, catalogue=dict(backups=[m]), desync=desync, resync={}, now=NOW)
    s = samples_of(text)
    finished = epoch(NOW - timedelta(hours=1))
    assert value(s, "last_success_timestamp_seconds") == finished
    assert value(s, "runs_total", result="success") == 1
    assert value(s, "runs_total", result="failure") == 0
    assert P + "failures_total" not in s and P + "last_failure_timestamp_seconds" not in s
    assert value(s, "last_duration_seconds") == 600
    assert value(s, "last_size_bytes") == 123456789
    assert value(s, "last_info", method="mariabackup", type="full", verify="checksum") == 1
    assert value(s, "last_desync_seconds") == 9 * 60
    assert value(s, "last_drain_seconds") == 1.5
    assert value(s, "last_sync_seconds") == 0.25
    assert value(s, "last_recv_queue_peak") == 12
    assert value(s, "last_flow_control_sent") == 0  # a measured 0 is written
    assert value(s, "kept_backups") == 1
    assert value(s, "newest_backup_timestamp_seconds") == finished
    assert value(s, "oldest_backup_timestamp_seconds") == finished
    # Every sample names the cluster and the node.
    for line in text.splitlines():
        if not line.startswith("#"):
            assert line.startswith(P) and f'cluster="{CLUSTER}",node="{NODE}"' in line


def test_help_and_type_precede_each_family_once():
    text = _metrics.render(CLUSTER, NODE, result=manifest(), catalogue=[manifest()], now=NOW)
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    for name in names:
        family = _metrics.BY_NAME[name]
        assert f"# HELP {name} " in text and f"# TYPE {name} {family.type}\n" in text
        first_sample = min(i for i, line in enumerate(text.splitlines()) if line.startswith(name + "{"))
        type_line = text.splitlines().index(f"# TYPE {name} {family.type}")
        assert type_line < first_sample


def test_resync_result_wins_over_the_manifest_and_unknown_is_absent():
    m = manifest(desync=dict(flow_control_sent=None, max_recv_queue_seen=None, drain_seconds=None, sync_seconds=None))
    s = samples_of(_metrics.render(CLUSTER, NODE, result=m, now=NOW))
    for name in ("last_flow_control_sent", "last_recv_queue_peak", "last_drain_seconds", "last_sync_seconds",
                 "last_desync_seconds"):
        assert P + name not in s, name
    resync = dict(flow_control_sent=3, max_recv_queue_seen=4711, drain_seconds=12.5, sync_seconds=1.0,
                  lease_before=dict(acquired_at=iso(NOW - timedelta(hours=1, minutes=30))))
    s = samples_of(_metrics.render(CLUSTER, NODE, result=m, resync=resync, now=NOW))
    assert value(s, "last_flow_control_sent") == 3
    assert value(s, "last_recv_queue_peak") == 4711
    assert value(s, "last_drain_seconds") == 12.5
    assert value(s, "last_desync_seconds") == 30 * 60


@pytest.mark.parametrize("bad", [None, "7", True, -1, float("nan"), float("inf"), [], {}])
def test_values_that_are_not_numbers_are_left_out(bad):
    m = manifest(bytes=bad, duration_seconds=bad, started_at=None, desync=dict(flow_control_sent=bad))
    s = samples_of(_metrics.render(CLUSTER, NODE, result=m, resync=dict(flow_control_sent=bad), now=NOW))
    assert P + "last_size_bytes" not in s and P + "last_duration_seconds" not in s
    assert P + "last_flow_control_sent" not in s


def test_desync_seconds_needs_a_lease_before_the_end():
    end = epoch(NOW)
    assert _metrics.desync_seconds({}, {}, end) is None
    assert _metrics.desync_seconds(dict(lease=None), dict(lease_before=None), end) is None
    assert _metrics.desync_seconds(dict(lease=dict(acquired_at="garbage")), {}, end) is None
    later = (NOW + timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
    assert _metrics.desync_seconds(dict(lease=dict(acquired_at=later)), {}, end) is None
    before = (NOW - timedelta(seconds=90)).strftime("%Y-%m-%d %H:%M:%S")
    assert _metrics.desync_seconds(dict(lease=dict(acquired_at=before)), {}, end) == 90


def test_failed_run_counts_its_step_and_keeps_the_last_success():
    good = _metrics.render(CLUSTER, NODE, result=manifest(hours_ago=30), now=NOW)
    text = _metrics.render(CLUSTER, NODE, result=failure(hours_ago=0.5), previous=good,
                           resync=dict(drain_seconds=2.0, flow_control_sent=None), now=NOW)
    s = samples_of(text)
    assert value(s, "last_success_timestamp_seconds") == epoch(NOW - timedelta(hours=30))
    assert value(s, "last_failure_timestamp_seconds") == epoch(NOW - timedelta(minutes=30))
    assert value(s, "runs_total", result="success") == 1
    assert value(s, "runs_total", result="failure") == 1
    assert value(s, "failures_total", step=failure()["step"]) == 1
    assert value(s, "last_duration_seconds") == 180  # failed_at - started_at
    assert value(s, "last_drain_seconds") == 2.0
    # The figures of the failed run replace the good run's: no size, no flow control from before.
    assert P + "last_size_bytes" not in s and P + "last_flow_control_sent" not in s
    assert value(s, "last_info", method="mariabackup", type="unknown", verify="unknown") == 1
    assert len(s[P + "last_info"]) == 1


def test_counters_survive_many_runs():
    text = ""
    runs = [manifest(hours_ago=50), failure(hours_ago=40, step="A"), failure(hours_ago=30, step="A"),
            failure(hours_ago=20, step="B"), failure(hours_ago=15, step=None), manifest(hours_ago=10, run="0badcafe")]
    for result in runs:
        text = _metrics.render(CLUSTER, NODE, result=result, previous=text, now=NOW)
    s = samples_of(text)
    assert value(s, "runs_total", result="success") == 2
    assert value(s, "runs_total", result="failure") == 4
    assert value(s, "failures_total", step="A") == 2
    assert value(s, "failures_total", step="B") == 1
    assert value(s, "failures_total", step="unknown") == 1
    assert value(s, "last_success_timestamp_seconds") == epoch(NOW - timedelta(hours=10))
    assert value(s, "last_failure_timestamp_seconds") == epoch(NOW - timedelta(hours=15))


def test_an_older_result_never_moves_a_timestamp_back():
    newer = _metrics.render(CLUSTER, NODE, result=manifest(hours_ago=1), now=NOW)
    s = samples_of(_metrics.render(CLUSTER, NODE, result=manifest(hours_ago=5, run="0badcafe"), previous=newer, now=NOW))
    assert value(s, "last_success_timestamp_seconds") == epoch(NOW - timedelta(hours=1))
    assert value(s, "runs_total", result="success") == 2


def test_long_step_is_capped():
    s = samples_of(_metrics.render(CLUSTER, NODE, result=failure(step="x" * 1000), now=NOW))
    (key,) = s[P + "failures_total"]
    assert key == (("step", "x" * _metrics.STEP_MAX),)


@pytest.mark.parametrize("bad", ["text", 3, ["list"]])
def test_result_must_be_a_dict(bad):
    with pytest.raises(ValueError):
        _metrics.render(CLUSTER, NODE, result=bad, now=NOW)


# ---------------------------------------------------------------------------------------------
# The catalogue

def test_catalogue_counts_only_restorable_backups_of_this_cluster():
    full = manifest(hours_ago=48)
    incremental = manifest(hours_ago=24, kind="incremental", parent=full["id"], chain=[full["id"]], run="11111111")
    incremental["chain"] = [full["id"], incremental["id"]]
    orphan = manifest(hours_ago=12, kind="incremental", parent="prod_db3_20261101T000000Z-deadbeef", run="22222222")
    newest = manifest(hours_ago=2, run="33333333")
    others = [
        manifest(hours_ago=1, cluster="prod_east", run="44444444"),     # another cluster sharing the prefix
        manifest(hours_ago=1, cluster="prod", uuid="ffffffff-0000-0000-0000-000000000000", run="55555555"),
        manifest(hours_ago=100, cluster="prod", run="66666666", result="failed"),
    ]
    catalogue = dict(backups=[full, incremental, orphan, newest] + others, failures=[])
    s = samples_of(_metrics.render(CLUSTER, NODE, result=newest, catalogue=catalogue, now=NOW))
    assert value(s, "kept_backups") == 3
    assert value(s, "newest_backup_timestamp_seconds") == epoch(NOW - timedelta(hours=2))
    assert value(s, "oldest_backup_timestamp_seconds") == epoch(NOW - timedelta(hours=48))


def test_empty_catalogue_says_zero_and_no_timestamps():
    s = samples_of(_metrics.render(CLUSTER, NODE, result=failure(), catalogue=dict(backups=[], failures=[]), now=NOW))
    assert value(s, "kept_backups") == 0
    assert P + "newest_backup_timestamp_seconds" not in s and P + "oldest_backup_timestamp_seconds" not in s


def test_lost_file_recovers_last_success_and_failure_from_the_directory():
    mine = manifest(hours_ago=20)
    other_node = manifest(hours_ago=2, node="db1", run="77777777")
    failed = failure(hours_ago=3)
    failed_elsewhere = failure(hours_ago=1, node="db1")
    catalogue = dict(backups=[mine, other_node], failures=[failed, failed_elsewhere])
    # A run whose result is a failure, with no previous file: the directory still shows this node's
    # good backup from 20 h ago (not db1's newer one).
    s = samples_of(_metrics.render(CLUSTER, NODE, result=failure(hours_ago=0.1), catalogue=catalogue, now=NOW))
    assert value(s, "last_success_timestamp_seconds") == epoch(NOW - timedelta(hours=20))
    assert value(s, "last_failure_timestamp_seconds") == epoch(NOW - timedelta(hours=0.1))
    s = samples_of(_metrics.render(CLUSTER, NODE, catalogue=catalogue, now=NOW))
    assert value(s, "last_failure_timestamp_seconds") == epoch(NOW - timedelta(hours=3))
    assert value(s, "runs_total", result="success") == 0  # nothing ran


# ---------------------------------------------------------------------------------------------
# Groups that a write does not update are kept; the archive and drill are never placeholders

def test_no_placeholders_for_archive_and_drill():
    text = _metrics.render(CLUSTER, NODE, result=manifest(), catalogue=[manifest()], now=NOW)
    assert "binlog_archive" not in text and "drill" not in text


def test_drill_and_archive_survive_backup_runs_and_backup_figures_survive_them():
    text = _metrics.render(CLUSTER, NODE, result=manifest(), catalogue=[manifest()], now=NOW)
    text = _metrics.render(CLUSTER, NODE, drill=dict(result="ok", finished_at=iso(NOW), duration_seconds=321.0),
                           archive=dict(lag_seconds=4.0, gaps=0, checked_at=iso(NOW)), previous=text, now=NOW)
    s = samples_of(text)
    assert value(s, "last_size_bytes") == 123456789 and value(s, "kept_backups") == 1
    assert value(s, "runs_total", result="success") == 1
    assert value(s, "drill_last_success_timestamp_seconds") == epoch(NOW)
    assert value(s, "drill_last_duration_seconds") == 321
    assert value(s, "binlog_archive_gaps") == 0 and value(s, "binlog_archive_lag_seconds") == 4
    text = _metrics.render(CLUSTER, NODE, result=failure(), previous=text, now=NOW)
    text = _metrics.render(CLUSTER, NODE, drill=dict(result="failed", finished_at=iso(NOW + timedelta(hours=1))),
                           previous=text, now=NOW)
    s = samples_of(text)
    assert value(s, "drill_last_success_timestamp_seconds") == epoch(NOW)
    assert value(s, "drill_last_failure_timestamp_seconds") == epoch(NOW + timedelta(hours=1))
    assert P + "drill_last_duration_seconds" not in s  # the failed drill did not say
    assert value(s, "binlog_archive_lag_seconds") == 4
    assert value(s, "runs_total", result="failure") == 1 and P + "last_size_bytes" not in s


# ---------------------------------------------------------------------------------------------
# Parsing the previous file

@pytest.mark.parametrize("line, expected", [
    ('a 1', ("a", {}, 1.0)),
    ('a{} 1.5', ("a", {}, 1.5)),
    ('a{x="1",y="2",} 3 1700000000000', ("a", {"x": "1", "y": "2"}, 3.0)),
    ('a 1e3', ("a", {}, 1000.0)),
    ('a .5', ("a", {}, 0.5)),
    ('a{x="q\\"b\\\\s\\nn"} -2', ("a", {"x": 'q"b\\s\nn'}, -2.0)),
    ('a{x="{},= "} NaN', ("a", {"x": "{},= "}, float("nan"))),
    ('a:b_c{ x = "1" } +Inf', ("a:b_c", {"x": "1"}, float("inf"))),
    ('# HELP a text', None),
    ('   ', None),
])
def test_parse_line(line, expected):
    got = _metrics.parse_line(line)
    if expected is None:
        assert got is None
    else:
        assert got[:2] == expected[:2]
        assert got[2] == expected[2] or (math.isnan(got[2]) and math.isnan(expected[2]))


@pytest.mark.parametrize("line", [
    '1a 1', 'a{x="1"', 'a{x="1} 1', 'a{x=1} 1', 'a{x="\\q"} 1', 'a{x="1",x="2"} 1', 'a', 'a 1 2 3', 'a one',
    'a{x="1"}1', 'a{x="1" y="2"} 1', 'a{"x"="1"} 1', 'a{x="1"} 1 two', 'a 1_000', 'a infinity', 'a 0x10',
    'a 1 1.5',
])
def test_parse_line_refuses(line):
    with pytest.raises(ValueError):
        _metrics.parse_line(line)


def test_garbled_previous_file_keeps_what_is_readable():
    good = _metrics.render(CLUSTER, NODE, result=failure(step="A"), now=NOW)
    garbage = "\n".join([
        "\x00\x01 binary junk",
        'galera_backup_failures_total{cluster="prod",node="db3",step="B"',       # cut off mid-line
        'galera_backup_failures_total{cluster="prod",node="db3",step="C"} NaN',
        'galera_backup_runs_total{cluster="prod",node="db3",result="success"} -5',
        'galera_backup_failures_total{cluster="other",node="db3",step="D"} 7',    # another cluster's
        'galera_backup_failures_total{cluster="prod",node="db1",step="E"} 7',     # another node's
        'galera_backup_failures_total{cluster="prod",node="db3"} 7',              # no step label
        'galera_backup_surprise_total{cluster="prod",node="db3"} 7',              # not ours
        'node_cpu_seconds_total{cpu="0"} 1',
    ])
    previous = good + garbage + "\n" + good.splitlines()[0] + "\n"
    samples, problems = _metrics.parse(previous, CLUSTER, NODE)
    assert len(problems) == 6, problems
    assert all("left out" in p for p in problems)
    assert value(samples, "failures_total", step="A") == 1
    assert set(samples[P + "failures_total"]) == {(("step", "A"),)}
    assert value(samples, "runs_total", result="success") == 0  # the readable 0, not the -5
    text = _metrics.render(CLUSTER, NODE, result=failure(step="A"), previous=previous, now=NOW)
    s = samples_of(text)
    assert value(s, "failures_total", step="A") == 2


@pytest.mark.parametrize("previous", ["", "garbage", "\n\n", "# only comments\n", "a{b=\"", "\udcff\udcfe",
                                      "galera_backup_runs_total 5\n" * 1000])
def test_any_previous_text_gives_a_fresh_start(previous):
    text = _metrics.render(CLUSTER, NODE, result=manifest(), previous=previous, now=NOW)
    s = samples_of(text)
    assert value(s, "runs_total", result="success") == 1 and value(s, "runs_total", result="failure") == 0


# ---------------------------------------------------------------------------------------------
# Escaping

@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_round_trip(name):
    text = _metrics.render(name, name, result=failure(cluster=name, node=name, step=name), now=NOW)
    assert text.count("\n") == len(text.splitlines())  # a newline in a name never starts a line
    for line in text.splitlines():
        assert line.startswith(("# HELP galera_backup_", "# TYPE galera_backup_", "galera_backup_"))
    clean = _metrics._text(name)
    s = samples_of(text, name, name)
    assert value(s, "failures_total", step=clean) == 1
    assert value(s, "runs_total", result="failure") == 1
    # Parsed back for another name, nothing is ours.
    assert _metrics.parse(text, name + "x", name)[0] == {}


@pytest.mark.parametrize("raw, escaped", [
    ('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a\nb", "a\\nb"), ("\\n", "\\\\n"), ("plain", "plain"),
    ("tab\there", "tab\there"),
])
def test_escape_label(raw, escaped):
    assert _metrics.escape_label(raw) == escaped


@pytest.mark.parametrize("number, text", [
    (0, "0"), (1.0, "1"), (1796094600.0, "1796094600"), (1.5, "1.5"), (0.1, "0.1"),
    (float("nan"), "NaN"), (float("inf"), "+Inf"), (-float("inf"), "-Inf"), (2.0 ** 60, repr(2.0 ** 60)),
])
def test_format_value(number, text):
    assert _metrics.format_value(number) == text


def test_promtool_accepts_rendered_files(tmp_path):
    tool = promtool()
    drill = dict(result="ok", finished_at=iso(NOW), duration_seconds=10.0)
    archive = dict(lag_seconds=1.0, gaps=0, checked_at=iso(NOW))
    texts = [_metrics.render(CLUSTER, NODE, result=manifest(), catalogue=[manifest()], drill=drill, archive=archive,
                             desync=dict(lease=dict(acquired_at=iso(NOW - timedelta(hours=2)))), now=NOW)]
    for name in HOSTILE:
        texts.append(_metrics.render(name, name, result=failure(cluster=name, node=name, step=name), now=NOW))
    for text in texts:
        proc = subprocess.run([tool, "check", "metrics"], input=text.encode("utf-8"), capture_output=True, check=False)
        assert proc.returncode == 0, (text, proc.stdout, proc.stderr)
        assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stderr
    # promtool is not a rubber stamp: a broken file fails.
    broken = texts[0].replace('node="db3"}', 'node="db3}', 1)
    assert subprocess.run([tool, "check", "metrics"], input=broken.encode(), capture_output=True,
                          check=False).returncode != 0


# ---------------------------------------------------------------------------------------------
# File names

@pytest.mark.parametrize("cluster, node, expected", [
    ("prod", "db3", "dbtools_galera_prod_db3.prom"),
    ("my-cluster.1", "node-1.example.com", "dbtools_galera_my-cluster.1_node-1.example.com.prom"),
])
def test_plain_file_names(cluster, node, expected):
    assert _metrics.file_name(cluster, node) == expected


def test_file_names_never_collide():
    pairs = [("a_b", "c"), ("a", "b_c"), ("prod east", "db1"), ("prod/east", "db1"), ("prod-east", "db1"),
             ("prod", "db1"), ("prod", "db1 "), ("x" * 200, "db1"), ("x" * 201, "db1")] + [(h, h) for h in HOSTILE]
    names = [_metrics.file_name(c, n) for c, n in pairs]
    assert len(set(names)) == len(names), names
    for name in names:
        assert re.fullmatch(r"dbtools_galera_[A-Za-z0-9_.-]+_[A-Za-z0-9_.-]+(~[0-9a-f]{8})?\.prom", name), name
        assert len(name.encode()) < 255 and "/" not in name


# ---------------------------------------------------------------------------------------------
# Writing

def _temps(directory) -> list:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_write_is_atomic_0644_and_counts_across_runs(tmp_path):
    directory = str(tmp_path / "textfile")
    os.mkdir(directory, 0o755)
    old_umask = os.umask(0o077)
    try:
        first = _metrics.write(directory, CLUSTER, NODE, result=manifest(), catalogue=dict(backups=[manifest()]),
                               now=NOW)
    finally:
        os.umask(old_umask)
    path = os.path.join(directory, "dbtools_galera_prod_db3.prom")
    assert first == dict(path=path, changed=True, problems=[])
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o644
    second = _metrics.write(directory, CLUSTER, NODE, result=failure(step="A"), now=NOW)
    assert second["problems"] == []
    with open(path, encoding="utf-8") as handle:
        s = samples_of(handle.read())
    assert value(s, "runs_total", result="success") == 1 and value(s, "failures_total", step="A") == 1
    assert value(s, "kept_backups") == 1  # carried: this write had no catalogue
    assert sorted(os.listdir(directory)) == ["dbtools_galera_prod_db3.prom"]


def test_write_keeps_clusters_and_nodes_apart(tmp_path):
    for cluster, node in (("a_b", "c"), ("a", "b_c"), ("prod", "db1"), ("prod", "db2")):
        _metrics.write(str(tmp_path), cluster, node, result=manifest(cluster=cluster, node=node), now=NOW)
        _metrics.write(str(tmp_path), cluster, node, result=manifest(cluster=cluster, node=node, run="0badcafe"), now=NOW)
    assert len(os.listdir(tmp_path)) == 4
    for cluster, node in (("a_b", "c"), ("a", "b_c"), ("prod", "db1"), ("prod", "db2")):
        with open(tmp_path / _metrics.file_name(cluster, node), encoding="utf-8") as handle:
            s = samples_of(handle.read(), cluster, node)
        assert value(s, "runs_total", result="success") == 2


def test_write_never_follows_a_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious\n")
    directory = tmp_path / "textfile"
    directory.mkdir()
    link = directory / "dbtools_galera_prod_db3.prom"
    link.symlink_to(target)
    out = _metrics.write(str(directory), CLUSTER, NODE, result=manifest(), now=NOW)
    assert len(out["problems"]) == 1 and "symbolic link" in out["problems"][0]
    assert target.read_text() == "precious\n"
    assert not link.is_symlink() and stat.S_ISREG(os.lstat(link).st_mode)
    assert value(samples_of(link.read_text()), "runs_total", result="success") == 1


def test_write_reads_a_garbled_or_binary_previous_file(tmp_path):
    path = tmp_path / "dbtools_galera_prod_db3.prom"
    path.write_bytes(b"\xff\xfe\x00garbage")
    out = _metrics.write(str(tmp_path), CLUSTER, NODE, result=manifest(), now=NOW)
    assert out["problems"] and "not UTF-8" in out["problems"][0]
    path.write_text("galera_backup_runs_total{oops\n")
    out = _metrics.write(str(tmp_path), CLUSTER, NODE, result=manifest(), now=NOW)
    assert len(out["problems"]) == 1 and "unreadable line" in out["problems"][0]
    assert value(samples_of(path.read_text()), "runs_total", result="success") == 1
    path.write_bytes(b"#" * (_metrics.MAX_PREVIOUS_BYTES + 1))
    out = _metrics.write(str(tmp_path), CLUSTER, NODE, result=manifest(), now=NOW)
    assert "larger than" in out["problems"][0]


def test_write_sweeps_only_its_own_stale_temporary_files(tmp_path):
    name = "dbtools_galera_prod_db3.prom"
    stale, fresh = tmp_path / f".{name}.0123abcd.tmp", tmp_path / f".{name}.89abcdef.tmp"
    other = tmp_path / ".dbtools_galera_prod_db1.prom.0123abcd.tmp"
    foreign = tmp_path / f".{name}.0123abcd.tmp.keep"
    for path in (stale, fresh, other, foreign):
        path.write_text("x")
    old = time.time() - 2 * _metrics.STALE_TEMP_SECONDS
    for path in (stale, other, foreign):
        os.utime(path, (old, old))
    _metrics.write(str(tmp_path), CLUSTER, NODE, result=manifest(), now=NOW)
    assert not stale.exists()
    assert fresh.exists() and other.exists() and foreign.exists()


@pytest.mark.parametrize("make, words", [
    (lambda base: "relative/dir", "not an absolute path"),
    (lambda base: str(base / "missing"), "does not exist"),
    (lambda base: "/etc", "system directory"),
    (lambda base: str(base) + "/../x", "not a normalised path"),
    (lambda base: str(base) + "/a\nb", "control character"),
    (lambda base: "", "is empty"),
])
def test_write_refuses_bad_directories(tmp_path, make, words):
    with pytest.raises(GaleraError) as err:
        _metrics.write(make(tmp_path), CLUSTER, NODE, result=manifest(), now=NOW)
    assert words in err.value.msg and "galera_backup_metrics_dir" in err.value.msg
    assert os.listdir(tmp_path) == []


def test_write_refuses_a_symlinked_world_writable_or_file_directory(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(GaleraError, match="symbolic link"):
        _metrics.write(str(tmp_path / "link"), CLUSTER, NODE, result=manifest(), now=NOW)
    (tmp_path / "file").write_text("")
    with pytest.raises(GaleraError, match="not a directory"):
        _metrics.write(str(tmp_path / "file"), CLUSTER, NODE, result=manifest(), now=NOW)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o1777)
    with pytest.raises(GaleraError, match="writable by every user"):
        _metrics.write(str(open_dir), CLUSTER, NODE, result=manifest(), now=NOW)
    assert os.listdir(real) == [] and os.listdir(open_dir) == []


# ---------------------------------------------------------------------------------------------
# The shipped rules, dashboard and docs

# Metrics of other exporters that the rules and the dashboard may use, with their source.
EXTERNAL = {
    "mysql_global_variables_wsrep_desync": "mysqld_exporter",
    "mysql_global_status_wsrep_local_state": "mysqld_exporter",
    "node_textfile_mtime_seconds": "node_exporter",
    "node_textfile_scrape_error": "node_exporter",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set:
    """The metric names a PromQL expression selects (strings, label matchers, ranges, grouping
    clauses, function calls and numbers removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # 1e3, 26h
        names.add(word)
    return names


@pytest.mark.parametrize("expr, names", [
    ('time() - max by (cluster) (galera_backup_last_success_timestamp_seconds{cluster=~"a|b"}) > 26 * 3600',
     {"galera_backup_last_success_timestamp_seconds"}),
    ("increase(galera_backup_runs_total[1d]) or on (cluster) foo_bar offset 5m", {"galera_backup_runs_total", "foo_bar"}),
    ("a > bool on (x) group_left (y) b", {"a", "b"}),
])
def test_metric_names_helper(expr, names):
    assert metric_names(expr) == names


def _alert_rules() -> list:
    with open(os.path.join(DOCS, "alerts.yml"), encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_use_only_known_metrics():
    rules = _alert_rules()
    assert {r["alert"] for r in rules} >= {
        "GaleraBackupMissing", "GaleraBackupLastRunFailed", "GaleraBackupDesyncTooLong", "GaleraNodeDesyncedTooLong",
        "GaleraBackupArchiveLag", "GaleraBackupDrillTooOld", "GaleraBackupMetricsStale"}
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= set(_metrics.BY_NAME) | set(EXTERNAL), (rule["alert"], names)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_is_tested_firing_and_quiet():
    with open(os.path.join(DOCS, "alerts_test.yml"), encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    fired, quiet = set(), set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
        series = " ".join(s["series"] for s in case["input_series"])
        alerts = {c["alertname"] for c in case["alert_rule_test"] if c["exp_alerts"]}
        expected = {tuple(sorted(a["exp_labels"].items())) for c in case["alert_rule_test"] for a in c["exp_alerts"]}
        # Each case also holds series that must not fire: more label sets than expected alerts.
        assert len(case["input_series"]) > len(expected), (alerts, series)
    names = {r["alert"] for r in _alert_rules()}
    assert fired == names
    # Every alert with a "for" is also checked quiet (before the "for" has passed).
    assert {r["alert"] for r in _alert_rules() if r.get("for")} <= quiet


def test_promtool_checks_and_tests_the_rules():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=DOCS, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in check.stdout
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=DOCS, capture_output=True, text=True,
                          check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_promtool_test_rules_can_fail(tmp_path):
    """The rule tests notice a changed threshold (they are not a rubber stamp)."""
    tool = promtool()
    with open(os.path.join(DOCS, "alerts.yml"), encoding="utf-8") as handle:
        rules = handle.read()
    assert "> 26 * 3600\n" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("> 26 * 3600\n", "> 28 * 3600\n", 1))
    shutil.copy(os.path.join(DOCS, "alerts_test.yml"), tmp_path / "alerts_test.yml")
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    assert test.returncode != 0 and "GaleraBackupMissing" in test.stdout + test.stderr


def _dashboard() -> dict:
    with open(os.path.join(DOCS, "grafana-dashboard.json"), encoding="utf-8") as handle:
        return json.load(handle)


def dashboard_exprs(dashboard: dict) -> list:
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append((variable["name"], query["query"]))
    return exprs


def test_dashboard_is_valid_and_queries_only_our_metrics():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    for title, expr in dashboard_exprs(dashboard):
        expr = re.sub(r"label_values\((.*), *\w+\)$", r"\1", expr)
        names = metric_names(expr)
        assert names and names <= set(_metrics.BY_NAME), (title, names)
        used |= names
    # The main metrics all have a panel.
    assert {f.name for f in _metrics.FAMILIES} - used == set()


def test_readme_documents_every_metric_and_alert():
    with open(os.path.join(DOCS, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    for family in _metrics.FAMILIES:
        assert f"| `{family.name}` | {family.type}" in readme, family.name
        for label in family.labels:
            assert f"`{label}`" in readme
    for rule in _alert_rules():
        assert f"`{rule['alert']}`" in readme
    assert "apt-get install -y --no-install-recommends prometheus prometheus-node-exporter" in readme
