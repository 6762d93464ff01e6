# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The metrics file end to end: ``_metrics.write`` writes it, Debian's node_exporter (textfile
collector only) reads it, Prometheus scrapes node_exporter and answers queries.

Both run on free loopback ports with their own temporary directories and the shipped alert rules
loaded; the fixtures stop them at the end, also when a test fails. Needs Debian's ``prometheus`` and
``prometheus-node-exporter`` (skipped without them, except under CI=true, where it fails).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "dbtools", "galera")
if not os.path.exists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(ROOT, LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

from ansible_collections.dbtools.galera.plugins.module_utils import _metrics  # noqa: E402  pylint: disable=wrong-import-position

DOCS = os.path.join(ROOT, "docs", "prometheus")
INSTALL = "apt-get install -y --no-install-recommends prometheus prometheus-node-exporter"
# A cluster name that needs every escape of the text format, and a plain one beside it.
CLUSTER = 'prod "east"\\1\nb'
NODE = "db3"
PLAIN = ("plain", "db1")
FINISHED = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
WAIT = 60.0


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    reason = f"{' / '.join(names)} not installed ({INSTALL})"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
    return ""  # not reached


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return response.read()


def wait_for(what: str, check, proc: subprocess.Popen, log: str, timeout: float = WAIT):
    """Poll ``check()`` until it returns something true; fail naming ``what`` and the log's tail."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    with open(log, encoding="utf-8", errors="replace") as handle:
        tail = handle.read()[-3000:]
    pytest.fail(f"{what} (exit status {proc.poll()}, last error {last}); log:\n{tail}")


class Service:
    """One process started for the tests, stopped by ``stop`` (terminate, then kill)."""

    def __init__(self, argv: list, log: str):
        self.log = log
        with open(log, "wb") as handle:
            self.proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def textfile_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("textfile")
    os.chmod(path, 0o755)
    return str(path)


@pytest.fixture(scope="module")
def node_exporter(tmp_path_factory, textfile_dir, request):
    exe = binary("prometheus-node-exporter", "node_exporter")
    port = free_port()
    log = str(tmp_path_factory.mktemp("node-exporter") / "node-exporter.log")
    service = Service([exe, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                       "--collector.textfile", f"--collector.textfile.directory={textfile_dir}"], log)
    request.addfinalizer(service.stop)
    url = f"http://127.0.0.1:{port}"
    wait_for("node_exporter did not answer", lambda: b"node_textfile_scrape_error" in get(url + "/metrics"),
             service.proc, log)
    return dict(url=url, port=port, service=service)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, node_exporter, request):
    exe = binary("prometheus")
    base = tmp_path_factory.mktemp("prometheus")
    shutil.copy(os.path.join(DOCS, "alerts.yml"), base / "alerts.yml")
    config = base / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(base / "alerts.yml")],
        "scrape_configs": [{"job_name": "node", "static_configs": [
            {"targets": [f"127.0.0.1:{node_exporter['port']}"]}]}],
    }))
    port = free_port()
    log = str(base / "prometheus.log")
    service = Service([exe, f"--config.file={config}", f"--storage.tsdb.path={base / 'data'}",
                       f"--web.listen-address=127.0.0.1:{port}"], log)
    request.addfinalizer(service.stop)
    url = f"http://127.0.0.1:{port}"
    wait_for("prometheus did not become ready", lambda: get(url + "/-/ready"), service.proc, log)
    return dict(url=url, service=service, log=log)


def query(prom: dict, expr: str) -> dict:
    body = get(f"{prom['url']}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def manifest(cluster: str, node: str) -> dict:
    stamp = FINISHED.strftime("%Y%m%dT%H%M%SZ")
    return dict(format=1, id=f"{_metrics._manifest.sanitize(cluster)}_{node}_{stamp}-0123abcd", result="ok",
                type="full", method="mariabackup", node=node, cluster=dict(name=cluster, state_uuid=None),
                started_at=(FINISHED - timedelta(minutes=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                finished_at=FINISHED.strftime("%Y-%m-%dT%H:%M:%SZ"), duration_seconds=420.0, bytes=987654321,
                verify=dict(level="prepare"), desync=dict(flow_control_sent=0, max_recv_queue_seen=5,
                                                          drain_seconds=0.5, sync_seconds=0.1))


def failure(cluster: str, node: str, failed: datetime) -> dict:
    return dict(result="failed", step="Wait for the backup run", method="mariabackup", node=node,
                cluster=dict(name=cluster), started_at=(failed - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                failed_at=failed.strftime("%Y-%m-%dT%H:%M:%SZ"))


@pytest.fixture(scope="module")
def written(textfile_dir):
    """The hostile cluster: a failed run, then a good one (with its desync lease). The plain one: a
    good run, then a failed one (its last run failed)."""
    lease = dict(lease=dict(acquired_at=(FINISHED - timedelta(minutes=6)).strftime("%Y-%m-%d %H:%M:%S")))
    out = [_metrics.write(textfile_dir, CLUSTER, NODE, result=failure(CLUSTER, NODE, FINISHED - timedelta(hours=1))),
           _metrics.write(textfile_dir, CLUSTER, NODE, result=manifest(CLUSTER, NODE), desync=lease,
                          catalogue=dict(backups=[manifest(CLUSTER, NODE)])),
           _metrics.write(textfile_dir, *PLAIN, result=manifest(*PLAIN), catalogue=dict(backups=[manifest(*PLAIN)])),
           _metrics.write(textfile_dir, *PLAIN, result=failure(*PLAIN, FINISHED + timedelta(hours=1)))]
    assert all(result["problems"] == [] for result in out)
    return [out[1], out[3]]


def test_prometheus_scrapes_the_written_file(prometheus, written):
    expr = "galera_backup_last_success_timestamp_seconds"
    data = wait_for(f"prometheus has no {expr} for both files",
                    lambda: len(query(prometheus, expr)["result"]) == 2 and query(prometheus, expr),
                    prometheus["service"].proc, prometheus["log"])
    by_cluster = {r["metric"]["cluster"]: r for r in data["result"]}
    assert set(by_cluster) == {CLUSTER, PLAIN[0]}
    hostile = by_cluster[CLUSTER]
    # The escaped name arrives exactly as it was: quotes, backslash and newline.
    assert hostile["metric"]["node"] == NODE and hostile["metric"]["job"] == "node"
    assert float(hostile["value"][1]) == FINISHED.timestamp()
    assert float(by_cluster[PLAIN[0]]["value"][1]) == FINISHED.timestamp()  # kept through the later failure
    assert set(hostile["metric"]) == {"__name__", "cluster", "node", "instance", "job"}

    failures = query(prometheus, 'galera_backup_failures_total{step="Wait for the backup run"}')["result"]
    assert sorted(r["metric"]["cluster"] for r in failures) == sorted([CLUSTER, PLAIN[0]])
    assert all(r["value"][1] == "1" for r in failures)
    runs = query(prometheus, "sum by (result) (galera_backup_runs_total)")["result"]
    assert {r["metric"]["result"]: r["value"][1] for r in runs} == {"success": "2", "failure": "2"}
    info = query(prometheus, "galera_backup_last_info")["result"]
    assert sorted((r["metric"]["cluster"], r["metric"]["type"], r["metric"]["verify"]) for r in info) == sorted([
        (PLAIN[0], "unknown", "unknown"), (CLUSTER, "full", "prepare")])
    desync = query(prometheus, "galera_backup_last_desync_seconds")["result"]
    assert [(r["metric"]["cluster"], r["value"][1]) for r in desync] == [(CLUSTER, "360")]
    kept = query(prometheus, "galera_backup_kept_backups")["result"]
    assert sorted(r["value"][1] for r in kept) == ["1", "1"]


def test_node_exporter_reads_our_files_without_error(prometheus, written):
    errors = query(prometheus, "node_textfile_scrape_error")["result"]
    assert [r["value"][1] for r in errors] == ["0"]
    # GaleraBackupMetricsStale's selector matches node_exporter's own file label, one per file.
    selector = 'node_textfile_mtime_seconds{file=~"(.*/)?dbtools_galera_[^/]*\\\\.prom"}'
    files = query(prometheus, selector)["result"]
    names = sorted(os.path.basename(r["metric"]["file"]) for r in files)
    assert names == sorted(os.path.basename(w["path"]) for w in written)


def _rules(prometheus: dict) -> list:
    answer = json.loads(get(prometheus["url"] + "/api/v1/rules"))
    return [r for g in answer["data"]["groups"] for r in g["rules"]]


def test_alert_rules_load_and_fire_on_the_real_metrics(prometheus, written):
    names = {r["name"] for r in _rules(prometheus)}
    assert "GaleraBackupMissing" in names and "GaleraBackupLastRunFailed" in names and len(names) >= 9
    # The plain cluster's last run failed after its success; the other cluster's good run came last.
    firing = wait_for("GaleraBackupLastRunFailed did not fire", lambda: [
        r for r in _rules(prometheus) if r["name"] == "GaleraBackupLastRunFailed" and r.get("alerts")],
        prometheus["service"].proc, prometheus["log"])
    assert [a["labels"]["cluster"] for a in firing[0]["alerts"]] == [PLAIN[0]]
    rules = _rules(prometheus)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert {r["name"] for r in rules if r.get("alerts")} == {"GaleraBackupLastRunFailed"}


def test_every_dashboard_query_runs(prometheus, written):
    with open(os.path.join(DOCS, "grafana-dashboard.json"), encoding="utf-8") as handle:
        dashboard = json.load(handle)
    # The variables' "All" value: "." in Prometheus's regular expressions does not match a newline.
    everything = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"] if v["type"] == "query"}
    assert everything == {"cluster": "(?s:.*)", "node": "(?s:.*)"}
    exprs = [t["expr"].replace("$cluster", everything["cluster"]).replace("$node", everything["node"])
             for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    # Every query is valid PromQL; all but the archive and drill panels have data already
    # (increase() needs two scrapes: wait for them).
    for expr in exprs:
        query(prometheus, expr)
    expected = [e for e in exprs if "binlog_archive" not in e and "drill" not in e]
    deadline = time.monotonic() + 30
    while True:
        missing = [e for e in expected if not query(prometheus, e)["result"]]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert missing == []
    empty = [e for e in exprs if e not in expected and query(prometheus, e)["result"]]
    assert empty == []  # nothing writes the archive and drill metrics yet
