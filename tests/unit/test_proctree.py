# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The tests' controller kill (tests/tools/proctree.py) reaches a worker that left the process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import proctree  # noqa: E402  pylint: disable=wrong-import-position

# A parent that forks a worker which calls setsid(), as ansible-playbook's WorkerProcess does; the worker
# prints its pid and both sleep.
PARENT = r"""
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()
    print(os.getpid(), flush=True)
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


def start():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = int(proc.stdout.readline())
    return proc, worker


def test_a_group_kill_misses_the_worker_and_kill_tree_does_not():
    proc, worker = start()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.2)
        assert proctree.alive(worker), "the worker died with the group: the reason for kill_tree is gone"
    finally:
        os.kill(worker, signal.SIGKILL)
    proc, worker = start()
    victims = proctree.kill_tree(proc.pid)
    proc.wait(timeout=10)
    assert set(victims) == {proc.pid, worker}
    assert proctree.leftovers(victims, timeout=5) == []
