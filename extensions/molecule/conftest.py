"""Helpers shared by the testinfra verifiers of every scenario.

Each test talks to the real nodes through testinfra's Docker backend (the Ansible
inventory Molecule writes uses the community.docker.docker connection).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "tools"))
from local_cluster import admin_connection  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from proctree import kill_tree, leftovers  # noqa: E402  pylint: disable=wrong-import-position

GROUP = "galera"


def sql(host, query: str, database: str | None = None) -> list[list[str]]:
    """Run a query with the mariadb client on a node (root over the local socket).

    Returns the rows as lists of strings; fails the test with the client's error.
    """
    cmd = "mariadb -N -B"
    if database:
        cmd += " -D " + shlex.quote(database)
    result = host.run(cmd + " -e " + shlex.quote(query))
    assert result.rc == 0, f"{host.backend.get_pytest_id()}: {query!r} failed: {result.stderr}"
    return [line.split("\t") for line in result.stdout.splitlines()]


def status(host, *names: str) -> dict[str, str]:
    """Global status variables of a node, by lower-case name."""
    wanted = ", ".join("'" + n + "'" for n in names)
    rows = sql(host, "SELECT LOWER(VARIABLE_NAME), VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                     f"WHERE VARIABLE_NAME IN ({wanted})")
    return dict(rows)


def variable(host, name: str) -> str:
    rows = sql(host, f"SELECT @@GLOBAL.{name}")
    return rows[0][0]


@pytest.fixture(scope="session")
def nodes(request) -> list:
    """Every node of the cluster group, in inventory order."""
    inventory = request.config.option.ansible_inventory
    hosts = testinfra.get_hosts([GROUP], connection="ansible", ansible_inventory=inventory)
    assert len(hosts) == 3, f"expected three Galera nodes in group {GROUP}, found {len(hosts)}"
    return sorted(hosts, key=lambda h: h.backend.get_pytest_id())


def node_of(nodes, name: str):
    """The testinfra host of a node by inventory name."""
    return next(n for n in nodes if n.backend.get_pytest_id().endswith(name))


def playbook_command(request, playbook: str, *extra: str) -> list:
    return ["ansible-playbook", "-i", request.config.option.ansible_inventory, playbook, *extra]


def playbook_env() -> dict:
    return dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")


def run_playbook(request, playbook: str, *extra: str, timeout: int = 900):
    """Run a playbook of the collection against the cluster; ``.output`` is stdout and stderr
    with whitespace collapsed (messages may be wrapped, failures go to stderr)."""
    run = subprocess.run(playbook_command(request, playbook, *extra), capture_output=True, text=True,
                         timeout=timeout, check=False, env=playbook_env())
    run.output = " ".join((run.stdout + "\n" + run.stderr).split())
    return run


def grep_node(node: str, needles: list, paths: list) -> str:
    """Files under ``paths`` on ``node`` holding any needle (the needles go on stdin, never argv).

    A control string planted first must be found, so a grep that did not run (docker exec failing, a
    missing container, a wrong path) fails the test instead of passing it.
    """
    control_file = "/var/tmp/dbtools-secrets-control"
    control = "dbtools-control-" + os.urandom(8).hex()
    subprocess.run(["docker", "exec", "-i", node, "sh", "-c", f"cat > {control_file}"], input=control, text=True,
                   check=True)
    try:
        found = subprocess.run(["docker", "exec", "-i", node, "grep", "-rlF", "-f", "-", control_file, *paths],
                               input="\n".join(list(needles) + [control]) + "\n", capture_output=True, text=True,
                               check=False)
    finally:
        subprocess.run(["docker", "exec", node, "rm", "-f", control_file], check=True)
    assert found.returncode in (0, 2), f"grep did not run on {node}: rc {found.returncode} {found.stderr}"
    assert control_file in found.stdout.splitlines(), f"the control string was not found on {node}: {found}"
    return "\n".join(line for line in found.stdout.splitlines() if line != control_file)


def kill_controller(proc) -> None:
    """SIGKILL a playbook run and every process it started, as a crash or a cancelled job does. ``killpg``
    alone misses ansible-playbook's workers (they call setsid); fails the test when one still runs after."""
    victims = kill_tree(proc.pid)
    proc.wait(timeout=60)
    left = leftovers(victims)
    assert not left, f"processes of the killed controller still run: {left}"
