# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark helper (not shipped): count, per host, the tasks that ran a module on it and every
module round trip (retries of an ``until`` loop included), and when each task started and ended
(``time.monotonic()``, the bench's clock); written as JSON to $TASK_COUNTER_FILE."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_counter
type: aggregate
short_description: counts module tasks and round trips per host (dbtools.galera benchmark)
description: Writes the counts to the file named by the TASK_COUNTER_FILE environment variable.
requirements: [enable in ANSIBLE_CALLBACKS_ENABLED]
"""

# Actions that run on the controller only: no round trip to the host.
CONTROLLER = frozenset(("set_fact", "debug", "assert", "fail", "meta", "include_tasks", "include_role",
                        "import_tasks", "import_role", "validate_argument_spec", "add_host", "group_by",
                        "include_vars", "set_stats", "pause"))


def _short(action: str) -> str:
    return action.rsplit(".", 1)[-1]


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_counter"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.tasks = {}
        self.round_trips = {}
        self.names = {}
        self.timeline = []  # [task name, host or "", "start"/"end", monotonic time]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.timeline.append([task.get_name(), "", "start", time.monotonic()])

    def _count(self, result, retry=False):
        if not retry:
            self.timeline.append([result._task.get_name(), result._host.get_name(), "end", time.monotonic()])
        action = _short(result._task.action)
        if action in CONTROLLER:
            return
        host = result._host.get_name()
        self.round_trips[host] = self.round_trips.get(host, 0) + 1
        if not retry:
            self.tasks[host] = self.tasks.get(host, 0) + 1
            self.names.setdefault(host, []).append(result._task.get_name())

    def v2_runner_on_ok(self, result):
        self._count(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result)

    def v2_runner_on_skipped(self, result):
        self.timeline.append([result._task.get_name(), result._host.get_name(), "end", time.monotonic()])

    def v2_runner_retry(self, result):
        self._count(result, retry=True)

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("TASK_COUNTER_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(dict(tasks=self.tasks, round_trips=self.round_trips, names=self.names,
                               timeline=self.timeline), handle, indent=2)
