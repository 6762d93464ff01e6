from __future__ import annotations

import os

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _watchdog

STATUS = {"wsrep_received": 1000, "wsrep_received_bytes": 1000 * 2048}  # 2 KiB per write-set
PROVIDER = {"gcs.recv_q_hard_limit": "1M"}
PLENTY = {"MemTotal": 8 << 30, "MemAvailable": 4 << 30}


@pytest.mark.parametrize("queue, max_queue, fraction, meminfo, fragment", [
    (0, 0, 0.5, PLENTY, None),
    (100, 0, 0.5, PLENTY, None),                        # ~200 KiB of 1 MiB: fine
    (300, 0, 0.5, PLENTY, "reached 50% of gcs.recv_q_hard_limit (1048576 bytes)"),
    (300, 0, 0, PLENTY, None),                          # fraction guard off
    (51, 50, 0, PLENTY, "receive queue 51 passed the guard of 50 write-sets"),
    (50, 50, 0, PLENTY, None),
    (10, 0, 0, {"MemTotal": 100, "MemAvailable": 4}, "memory is short (4 of 100 bytes available)"),
    (0, 0, 0, {"MemTotal": 100, "MemAvailable": 4}, None),  # no queue: memory is not ours to guard
])
def test_guard_reason(queue, max_queue, fraction, meminfo, fragment):
    reason = _watchdog.guard_reason({"recv_queue": queue}, STATUS, PROVIDER, max_queue, fraction, meminfo)
    if fragment is None:
        assert reason is None
    else:
        assert fragment in reason


def test_paths_are_stable_per_owner_and_node_and_private_to_run_dir():
    a = _watchdog.paths("owner-1", "node3")
    assert a == _watchdog.paths("owner-1", "node3")
    assert a != _watchdog.paths("owner-2", "node3")
    assert a != _watchdog.paths("owner-1", "node2")
    assert os.path.dirname(a["pid"]) == _watchdog.RUN_DIR


def test_pid_alive_and_read_pid(tmp_path):
    assert _watchdog.pid_alive(os.getpid())
    pid_file = tmp_path / "p.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert _watchdog.read_pid(str(pid_file)) == os.getpid()
    assert _watchdog.read_pid(str(tmp_path / "absent")) is None
    assert _watchdog.read_pid(None) is None
    pid_file.write_text("garbage")
    assert _watchdog.read_pid(str(pid_file)) is None


def test_pid_alive_false_for_a_reaped_child():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert not _watchdog.pid_alive(pid)


def test_guard_reason_cluster_shrank_below_min_cluster_size():
    snap = {"recv_queue": 0, "cluster_size": 2}
    reason = _watchdog.guard_reason(snap, STATUS, PROVIDER, 0, 0.5, PLENTY, 2)
    assert "shrank to 2 member(s)" in reason and "min_cluster_size=2" in reason
    assert _watchdog.guard_reason({"recv_queue": 0, "cluster_size": 3}, STATUS, PROVIDER, 0, 0.5, PLENTY, 2) is None
