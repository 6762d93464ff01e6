# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The restore and the schedule on nodes where systemd runs the server, as on an operator's Debian host.

The Molecule cluster has no init system (its inventory gives the restore its start, bootstrap and stop
commands). Here three containers of the node image's systemd flavor (``images/node/build.sh bookworm
systemd``: systemd is PID 1, Debian's ``mariadb.service``) form a cluster on their own network
``dbtools-systemd``, started the way Debian's packages start one (``galera_new_cluster``, then ``systemctl
start mariadb``), and the playbooks run with **no** ``galera_restore_*_command``: ``restore_cluster`` stops the
running servers with ``systemctl stop``, bootstraps with ``galera_new_cluster`` and starts the joiners with
``systemctl start``; ``rebuild_node`` starts its node with ``systemctl start``; ``galera_schedule`` writes its
units into a running systemd, which reads them back and runs them. Everything is removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ansible_playbook

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKDIR = os.path.join(ROOT, ".build", "systemdtest")
NETWORK = "dbtools-systemd"
NODES = ["dbtools-sd-node1", "dbtools-sd-node2", "dbtools-sd-node3"]
LOGIN_USER = "dbtools"
LOGIN_PASSWORD = "dbtools-test-systemd"
CLUSTER = "dbtools"


def docker(*args, check=True, input_text=None, timeout=600):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, input=input_text, check=False,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def sh(node: str, script: str, check=True, input_text=None) -> str:
    proc = docker("exec", "-i", node, "sh", "-c", script, check=False, input_text=input_text)
    if check and proc.returncode != 0:
        raise AssertionError(f"{node}: {script!r} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


def sql(node: str, query: str) -> str:
    return sh(node, "mariadb -N -B", input_text=query)


def status(node: str) -> dict:
    rows = sql(node, "SHOW GLOBAL STATUS WHERE Variable_name IN "
                     "('wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_cluster_status')")
    return dict(line.split("\t", 1) for line in rows.splitlines())


def wait_synced(nodes, size=3, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    seen = {}
    while time.monotonic() < deadline:
        try:
            seen = {node: status(node) for node in nodes}
        except AssertionError as exc:
            seen = {"error": str(exc)}
        else:
            if all(s.get("wsrep_cluster_size") == str(size) and s.get("wsrep_local_state_comment") == "Synced"
                   and s.get("wsrep_cluster_status") == "Primary" for s in seen.values()):
                return
        time.sleep(2)
    raise AssertionError(f"the cluster did not become {size} Synced nodes within {timeout}s: {seen}")


def node_image() -> str:
    out = subprocess.run([os.path.join(ROOT, "images", "node", "build.sh"),
                          os.environ.get("GALERA_SUITE", "bookworm"), "systemd"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def remove_lab() -> None:
    docker("rm", "-f", "-v", *NODES, check=False)
    docker("network", "rm", NETWORK, check=False)


def systemd_state(node: str, timeout=120) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = docker("exec", node, "systemctl", "is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    return state


def main_pid_is_the_server(node: str) -> tuple:
    """(systemd's MainPID of mariadb.service, the pid of mariadbd): equal when systemd runs the server."""
    main = sh(node, "systemctl show -p MainPID --value mariadb.service")
    server = sh(node, "pgrep -x mariadbd || true")
    return main, server


class Lab:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.inventory = os.path.join(workdir, "inventory.ini")
        self.runs = 0

    def run(self, target: str, *extra: str, **env_extra: str) -> tuple:
        """ansible-playbook of ``target`` (a playbook name or file) on the lab: (argv, completed process)."""
        self.runs += 1
        return ansible_playbook(self.workdir, self.inventory, target, *extra, **env_extra)

    def playbook(self, name: str, *extra: str, check=True) -> subprocess.CompletedProcess:
        """ansible-playbook of one of the collection's playbooks on the lab; its whole output is kept in a file."""
        argv, proc = self.run(f"dbtools.galera.{name}", *extra)
        log = os.path.join(self.workdir, f"run{self.runs}-{name}.log")
        with open(log, "w", encoding="utf-8") as handle:
            handle.write(shlex.join(argv) + "\n" + proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"{name} failed ({proc.returncode}); the end of its output ({log}):\n"
                                 f"{(proc.stdout + proc.stderr)[-6000:]}")
        return proc


def start_cluster() -> None:
    """Configure the nodes and start the cluster as Debian's packages do, through systemd."""
    for index, node in enumerate(NODES):
        # Debian's default: no error log file, the server's messages go to the journal (the restore reads them there).
        sh(node, "sed -i '/^log_error/d' /etc/mysql/mariadb.conf.d/60-galera.cnf")
        sh(node, "cat > /etc/mysql/mariadb.conf.d/70-node.cnf", input_text=(
            "[mariadb]\n"
            f"wsrep_cluster_address = gcomm://{','.join(NODES)}\n"
            f"wsrep_node_name = {node}\nwsrep_node_address = {node}\n"
            f"server_id = {index + 1}\ngtid_domain_id = {index + 11}\n"))
    sh(NODES[0], "galera_new_cluster")
    for node in NODES[1:]:
        sh(node, "systemctl start mariadb.service")
    wait_synced(NODES)


def create_account(subnet: str) -> None:
    version = sql(NODES[0], "SELECT VERSION()")
    statements = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "tools", "grants.py"), "sql", "--version", version,
         "--user", LOGIN_USER, "--host", "localhost", "--host", subnet, "--password-env", "DBTOOLS_GRANTS_PASSWORD"],
        check=True, capture_output=True, text=True, env=dict(os.environ, DBTOOLS_GRANTS_PASSWORD=LOGIN_PASSWORD)).stdout
    sh(NODES[0], "mariadb", input_text=statements)


@pytest.fixture(scope="module")
def lab(controller):  # pylint: disable=unused-argument
    image = node_image()
    remove_lab()
    shutil.rmtree(WORKDIR, ignore_errors=True)
    os.makedirs(os.path.join(WORKDIR, "tmp"))
    try:
        docker("network", "create", NETWORK)
        subnet = json.loads(docker("network", "inspect", NETWORK).stdout)[0]["IPAM"]["Config"][0]["Subnet"]
        for node in NODES:
            # systemd as PID 1 needs its own /run and the cgroup hierarchy (Molecule's documented recipe for
            # systemd containers); no privileges beyond Docker's defaults.
            docker("run", "-d", "--name", node, "--hostname", node, "--network", NETWORK, "--tmpfs", "/run",
                   "--tmpfs", "/run/lock", "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", image)
        for node in NODES:
            state = systemd_state(node)
            if state not in ("running", "degraded"):
                failed = docker("exec", node, "systemctl", "--failed", "--no-legend", check=False).stdout
                pytest.fail(f"systemd did not come up in {node} (state {state!r}; failed units: {failed.strip()}); "
                            "this Docker engine must let a container run systemd with the host's cgroups")
        start_cluster()
        create_account(subnet)
        with open(os.path.join(WORKDIR, "inventory.ini"), "w", encoding="utf-8") as handle:
            handle.write("[galera]\n" + "\n".join(NODES) + "\n\n[galera:vars]\n"
                         "ansible_connection=community.docker.docker\n"
                         "ansible_python_interpreter=/usr/bin/python3\n"
                         f"galera_login_user={LOGIN_USER}\ngalera_login_password={LOGIN_PASSWORD}\n"
                         # what a backup of this small cluster needs (the gcache-space pre-flight, docs/backup.md)
                         "galera_backup_max_duration=3600\n")
        yield Lab(WORKDIR)
    finally:
        remove_lab()


def markers(node: str) -> list:
    return sql(node, "SELECT note FROM sdtest.t ORDER BY id").splitlines()


def test_restore_cluster_through_systemd(lab):
    sql(NODES[0], "CREATE DATABASE sdtest; CREATE TABLE sdtest.t (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT); "
                  "INSERT INTO sdtest.t (note) VALUES ('before-backup')")
    lab.playbook("backup", "-e", f"galera_backup_node={NODES[2]}")
    # The backup directory on every node, as shared storage or an operator's copy would put it.
    assert sh(NODES[2], "ls /var/backups/galera"), "no backup on the backed-up node"
    for node in NODES[:2]:
        subprocess.run(f"docker exec {NODES[2]} tar -C /var/backups -cf - galera | "
                       f"docker exec -i {node} tar -C /var/backups -xf -", shell=True, check=True)
        assert sh(node, "ls /var/backups/galera") == sh(NODES[2], "ls /var/backups/galera")
    sql(NODES[0], "INSERT INTO sdtest.t (note) VALUES ('after-backup')")
    before_moved = {node: sh(node, "ls -d /var/lib/mysql.dbtools-* 2>/dev/null || true") for node in NODES}

    # A unit that does not run the servers (here haproxy's; on a host with several servers, another server's
    # mariadb@NAME), with a bootstrap command of its own: refused before anything changes, nothing stopped (it
    # used to stop that unit, then find the server still running).
    pids = {node: sh(node, "pgrep -x mariadbd") for node in NODES}
    wrong = lab.playbook("restore_cluster", "-e", f"galera_restore_confirm={CLUSTER}", "-e",
                         "galera_restore_service=haproxy", "-e",
                         json.dumps(dict(galera_restore_bootstrap_command=["galera_new_cluster"])), check=False)
    assert wrong.returncode != 0
    for node in NODES:
        assert re.search(rf"{node} must stop its server: galera_restore_service='haproxy' \(haproxy.service, inactive\) "
                         rf"does not run this node's server: its process {pids[node]} \(pid file /run/mysqld/mysqld.pid\) "
                         r"belongs to the unit mariadb.service\. .* set galera_restore_service to 'mariadb.service'",
                         wrong.stdout), wrong.stdout[-4000:]
        assert sh(node, "pgrep -x mariadbd") == pids[node], f"{node}'s server was stopped or restarted"
        assert sh(node, "ls -d /var/lib/mysql.dbtools-* 2>/dev/null || true") == before_moved[node]
    wait_synced(NODES, timeout=10)

    # A disaster restore while the servers run: confirmed, so the restore stops them itself (systemctl stop).
    run = lab.playbook("restore_cluster", "-e", f"galera_restore_confirm={CLUSTER}")
    out = run.stdout
    assert re.search(rf"{NODES[0]}: .*bootstrapped a new Primary component.*read from journal of mariadb", out), \
        out[-4000:]
    for node in NODES[1:]:
        assert re.search(rf"{node}: .*joined by IST .*read from journal of mariadb", out), \
            f"{node} did not join by IST:\n{out[-4000:]}"

    wait_synced(NODES, timeout=60)
    for node in NODES:
        assert markers(node) == ["before-backup"], f"{node} does not hold exactly the backup's rows"
        assert sh(node, "systemctl is-active mariadb.service") == "active"
        main, server = main_pid_is_the_server(node)
        assert main == server and main != "0", f"{node}: mariadb.service's MainPID {main}, mariadbd {server}"
        moved = sh(node, "ls -d /var/lib/mysql.dbtools-* 2>/dev/null || true")
        assert moved != before_moved[node], f"{node}: the old data directory was not moved aside"
    # galera_new_cluster must not leave the bootstrap option in systemd's environment: the next
    # `systemctl restart mariadb` of that node would start a second Primary component.
    environment = sh(NODES[0], "systemctl show-environment")
    assert "--wsrep-new-cluster" not in environment, environment
    # And a plain restart through systemd keeps it in the cluster.
    sh(NODES[0], "systemctl restart mariadb.service")
    wait_synced(NODES, timeout=120)


def test_rebuild_node_through_systemd(lab):
    node = NODES[2]
    sh(node, "systemctl stop mariadb.service && find /var/lib/mysql -mindepth 1 -delete")
    wait_synced(NODES[:2], size=2, timeout=60)
    sql(NODES[0], "INSERT INTO sdtest.t (note) VALUES ('while-node3-was-lost')")
    sh(node, "echo lost > /var/lib/mysql/WIPED-BY-SYSTEMD-TEST")
    asides = sh(node, "ls -d /var/lib/mysql.dbtools-*")
    # A unit systemd does not know: refused before anything changes.
    typo = lab.playbook("rebuild_node", "-e", f"galera_node={node}", "-e", "galera_restore_service=mariadb-typo",
                        check=False)
    assert typo.returncode != 0
    assert (f"{node} must start its server: galera_restore_service='mariadb-typo': systemd has no such unit on this "
            "host (LoadState not-found)") in typo.stdout, typo.stdout[-4000:]
    assert sh(node, "cat /var/lib/mysql/WIPED-BY-SYSTEMD-TEST") == "lost"
    assert sh(node, "ls -d /var/lib/mysql.dbtools-*") == asides

    out = lab.playbook("rebuild_node", "-e", f"galera_node={node}").stdout
    assert re.search(rf"{node}: .*joined by IST .*read from journal of mariadb", out), out[-4000:]
    assert sh(node, "cat /var/lib/mysql.dbtools-*/WIPED-BY-SYSTEMD-TEST") == "lost"
    wait_synced(NODES, timeout=60)
    assert markers(node) == ["before-backup", "while-node3-was-lost"]
    assert sh(node, "systemctl is-active mariadb.service") == "active"
    main, server = main_pid_is_the_server(node)
    assert main == server and main != "0", f"{node}: mariadb.service's MainPID {main}, mariadbd {server}"


# A name and paths an operator's may hold: spaces, quotes, $, %, a backslash, a backtick (galera_schedule
# escapes each for systemd, which must read back exactly these strings and pass them unchanged).
HOSTILE_DIR = "/srv/ops $(touch pwned) 100% 'q' \"dq\" \\ `x`"


def test_schedule_timer_runs_under_systemd(lab):
    node = NODES[0]
    recorder = "/usr/local/bin/record-argv"
    # The program the timer's service starts records its argv and working directory (the question here is
    # what systemd passes, not the playbook: the restore tests above run those).
    sh(node, f"cat > {recorder} && chmod 0755 {recorder}", input_text=(
        "#!/usr/bin/python3\nimport json, os, sys\n"
        "json.dump(dict(argv=sys.argv[1:], cwd=os.getcwd(), env=os.environ.get('GALERA_TEST_ENV')),\n"
        "          open('/run/recorded-argv.json', 'w'))\n"))
    sh(node, f"mkdir -p {shlex.quote(HOSTILE_DIR)} && touch {shlex.quote(HOSTILE_DIR + '/inventory.ini')}")
    args = dict(name="sd-test", playbook="backup", inventory=f"{HOSTILE_DIR}/inventory.ini", hosts="galera:!x",
                extra_vars_files=[f"{HOSTILE_DIR}/vault 1.yml"], ansible_playbook=recorder,
                env={"GALERA_TEST_ENV": "a b $HOME %h \"q\""}, on_calendar="*-*-* 01:30:00")
    result = module(lab, node, "galera_schedule", args)
    assert result.get("changed") and not result.get("failed"), result
    assert result["systemd_running"] is True, result
    unit = result["unit"]
    assert sh(node, f"systemctl is-enabled {unit}.timer") == "enabled"
    assert sh(node, f"systemctl is-active {unit}.timer") == "active"
    # systemd's own reading of the timer
    assert "01:30:00" in sh(node, f"systemctl show -p TimersCalendar --value {unit}.timer")
    sh(node, f"systemctl start {unit}.service")
    recorded = json.loads(sh(node, "cat /run/recorded-argv.json"))
    assert recorded["argv"] == result["command"][1:], (recorded, result["command"])
    assert recorded["cwd"] == HOSTILE_DIR, recorded
    assert recorded["env"] == "a b $HOME %h \"q\"", recorded
    assert sh(node, "find / -xdev -name pwned") == "", "a shell ran the hostile path's $(...)"

    again = module(lab, node, "galera_schedule", args)
    assert not again.get("changed"), again

    gone = module(lab, node, "galera_schedule", dict(name="sd-test", playbook="backup", state="absent"))
    assert gone.get("changed") and not gone.get("failed"), gone
    assert docker("exec", node, "systemctl", "cat", f"{unit}.timer", check=False).returncode != 0
    assert "not-found" in sh(node, f"systemctl show -p LoadState --value {unit}.timer")


def module(lab, node: str, name: str, args: dict) -> dict:
    """One module call on a node through ansible-playbook (docker connection); its result."""
    play = [{"name": name, "hosts": node, "gather_facts": False,
             "tasks": [{"name": name, f"dbtools.galera.{name}": args}]}]
    path = os.path.join(lab.workdir, f"module-{lab.runs + 1}.yml")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(play, handle)
    _argv, proc = lab.run(path, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    try:
        return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"][node]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(f"{name} gave no result ({exc}): {proc.stdout[-3000:]}{proc.stderr[-3000:]}")
