# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kill a controller the way a crash or a cancelled job does: the process and everything it started.

``os.killpg`` is not enough for ansible-playbook: its workers call ``setsid()`` (ansible-core's
``WorkerProcess._detach``), so they leave the playbook's process group and outlive a group kill. The tests
that kill a controller use ``kill_tree`` and then ``leftovers`` to prove nothing of it runs on.
"""

from __future__ import annotations

import os
import signal
import time


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list:
    """Every process below ``pid`` now (children, their children...)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent does not count)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_tree(pid: int) -> list:
    """SIGSTOP ``pid`` and its descendants (so nothing forks meanwhile), then SIGKILL them all; the pids."""
    victims, seen = [], set()
    for _round in range(5):
        new = [p for p in [pid] + descendants(pid) if p not in seen]
        if not new:
            break
        for p in new:
            seen.add(p)
            victims.append(p)
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


def leftovers(pids, timeout: float = 15.0) -> list:
    """The processes of ``pids`` still running after up to ``timeout`` seconds ([] when all are gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)
