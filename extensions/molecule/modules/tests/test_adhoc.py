"""Ad-hoc use as the README shows it: the full name, and the short name through ANSIBLE_LIBRARY."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import playbook_env

MODULES = os.path.join(os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":")[0],
                       "ansible_collections", "dbtools", "galera", "plugins", "modules")


@pytest.mark.parametrize("module, extra_env", [
    ("dbtools.galera.galera_info", {}),
    ("galera_info", {"ANSIBLE_LIBRARY": MODULES}),
])
def test_adhoc_galera_info(request, module, extra_env):
    env = dict(playbook_env(), ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json", **extra_env)
    run = subprocess.run(["ansible", "-i", request.config.option.ansible_inventory, "galera-node3", "-m", module,
                          "-a", "sample_seconds=0"], capture_output=True, text=True, check=False, env=env, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["galera-node3"]
    assert result["node"]["node_name"] == "galera-node3"
    assert result["node"]["local_state_comment"] == "Synced"
    assert result["changed"] is False
