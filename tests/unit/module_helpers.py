# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module of the collection as Ansible does: its entry point in a new Python, the arguments as
ANSIBLE_MODULE_ARGS on stdin, the result read from its JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import COLLECTIONS


def run_module(name: str, args: dict, check: bool = False, diff: bool = False, env: dict | None = None) -> dict:
    """The result of module ``name`` with ``args`` (check and diff mode on request; ``env`` added to this
    process's environment)."""
    args = dict(args)
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    proc = subprocess.run([sys.executable, "-m", f"ansible_collections.dbtools.galera.plugins.modules.{name}"],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=COLLECTIONS, **(env or {})), timeout=120, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from {name}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}") from None
