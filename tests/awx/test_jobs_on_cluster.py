"""Every shipped job template, run as AWX runs it, against the local Docker cluster.

Like an AWX job: ansible-runner with a private data directory (the project, an inventory script with
host variables, the survey's defaults and AWX's meta variables as ``!unsafe`` extra variables, the
"Galera database login" credential's injected variables in an ``-e @file``). The inventory gives each
node its own ``galera_login_unix_socket``, at a path where the server's socket was moved for the test
(no socket is left at the usual paths), and the credential's socket field is empty: the AWX credential
must not replace the per-host socket (issue 16). A socket named to a module is used or fails, never
falls back, so the jobs succeeding shows each host's socket was used; in these containers the server
also listens on TCP, where a lost socket would fall back to localhost:3306 and still log in, so the
negative case (the old injectors) is proven offline in test_precedence.py. The login is a password
user with the documented least grants (tests/tools/grants.py). Then every artifact and job event is
searched for the password and the encryption key.

Needs the cluster (scripts/test awx brings one up) and the cluster lock.
"""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import sys

import pytest

import awxsim

sys.path.insert(0, str(awxsim.ROOT / "tests" / "tools"))
from grants import account_sql, parse_version  # noqa: E402  pylint: disable=wrong-import-position
from local_cluster import admin_connection  # noqa: E402  pylint: disable=wrong-import-position

NODES = ("galera-node1", "galera-node2", "galera-node3")
USUAL_SOCKET = "/run/mysqld/mysqld.sock"
USER = "dbtools_awx"
# Hostile on purpose: quotes, a command substitution, backticks, '#', ';', a backslash, a template. ASCII only:
# Debian 12's PyMySQL (1.0.2) sends a password as latin-1, the mariadb clients as UTF-8.
PASSWORD_MARKER = "awxPw7QkZr"
PASSWORD = f"{PASSWORD_MARKER} 'q\" $(id) `id` #;\\ {{{{ 7 * 7 }}}}"
KEY_MARKER = "awxKey4MvTx"
ENCRYPT_KEY = f"{KEY_MARKER}-{{{{ lookup('env','HOME') }}}} $(id) 'k\""
SECRETS = {"database password": (PASSWORD, PASSWORD_MARKER), "encryption key": (ENCRYPT_KEY, KEY_MARKER)}
OWNER = "change-awx-4711"
ids = itertools.count(4200)


def socket_of(node: str) -> str:
    return f"/run/mysqld/dbtools-awx-{node}.sock"


def sh(node: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", "exec", node, "sh", "-c", command], capture_output=True, text=True,
                          timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"{node}: {command}: {done.stderr}"
    return done


def sql_admin(node: str, query: str, args=None) -> list:
    conn = admin_connection(node)
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def inventory() -> dict:
    hostvars = {n: dict(ansible_connection="community.docker.docker", ansible_python_interpreter="/usr/bin/python3",
                        galera_login_unix_socket=socket_of(n)) for n in NODES}
    return {"all": {"children": ["galera"]}, "galera": {"hosts": list(NODES)}, "_meta": {"hostvars": hostvars}}


@pytest.fixture(scope="module")
def cluster():
    """The three nodes, Synced; the socket of each moved to its per-host path; the credential's user."""
    for node in NODES:
        state = sql_admin(node, "SHOW STATUS LIKE 'wsrep_local_state_comment'")
        assert state and state[0][1] == "Synced", \
            f"{node} is not a Synced member ({state}); bring the cluster up first (scripts/test awx does)"
    user = f"'{USER}'@'localhost'"
    sql_admin(NODES[0], f"DROP USER IF EXISTS {user}")
    # The collection's documented account (tests/tools/grants.py), with the password bound, not quoted.
    version = parse_version(sql_admin(NODES[0], "SELECT VERSION()")[0][0])
    for statement in account_sql(version, USER, ["localhost"], password=None):
        if "IDENTIFIED BY" in statement:
            sql_admin(NODES[0], statement.replace("'CHANGE-ME'", "%s"), (PASSWORD,))
        else:
            sql_admin(NODES[0], statement.rstrip(";"))
    had_dir = {n: sh(n, "test -d /var/backups/galera", check=False).returncode == 0 for n in NODES}
    moved = []
    try:
        for node in NODES:
            sh(node, f"mv {USUAL_SOCKET} {shlex.quote(socket_of(node))}")
            moved.append(node)
        yield dict(had_dir=had_dir)
    finally:
        for node in moved:
            sh(node, f"test -S {USUAL_SOCKET} || mv {shlex.quote(socket_of(node))} {USUAL_SOCKET}", check=False)
        sql_admin(NODES[0], f"DROP USER IF EXISTS {user}")


@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory):
    """Every shipped job template, in the order an operator would use them; then the cleanup."""
    base = tmp_path_factory.mktemp("awx-jobs")
    credential = (awxsim.credential_type(), dict(login_user=USER, login_password=PASSWORD, login_unix_socket=""))
    run = {}

    def job(name, answers=None, extra_vars=None, verbosity=None, creds=(credential,)):
        template = awxsim.job_template(name)
        run[name] = awxsim.Job(base, next(ids), template, inventory(), answers=answers, extra_vars=extra_vars,
                               credentials=list(creds)).run(verbosity=verbosity)
        return run[name]

    restore_dir = None
    backup = None
    try:
        job("Galera status")
        # The key as a job template extra variable (it could come from a Vault credential too); -vvv, the
        # most a job template's verbosity can show.
        backup = job("Galera backup", extra_vars=dict(galera_backup_encrypt=True, galera_backup_encrypt_key=ENCRYPT_KEY),
                     verbosity=3)
        job("Galera backup freshness", creds=())
        job("Galera desync", answers=dict(galera_node="galera-node2", galera_owner=OWNER))
        run["desynced"] = sql_admin("galera-node2", "SELECT @@wsrep_desync")[0][0]
        job("Galera resync", answers=dict(galera_node="galera-node2", galera_owner=OWNER))
        node = backup_node(backup)
        if node:
            restore_dir = f"/var/tmp/dbtools-awx-restore-{backup.job_id}"
            job("Galera restore", answers=dict(galera_hosts=node, galera_backup_restore_datadir=restore_dir),
                extra_vars=dict(galera_backup_encrypt_key=ENCRYPT_KEY), creds=())
            run["restored_files"] = sh(node, f"ls -1 {restore_dir}", check=False).stdout.split()
        yield run
    finally:
        node = backup_node(backup) if backup else None
        manifest = backup_manifest(backup) if backup else None
        if node and manifest:
            sh(node, f"rm -rf /var/backups/galera/{shlex.quote(manifest['id'])}", check=False)
        if node and restore_dir:
            sh(node, f"rm -rf {shlex.quote(restore_dir)}", check=False)
        for n in NODES:
            # Leave no backup directory behind that this test created (other scenarios search them).
            if not cluster["had_dir"][n]:
                sh(n, "rmdir /var/backups/galera 2>/dev/null; rmdir /var/backups/.dbtools-galera-verify 2>/dev/null",
                   check=False)


def published(job) -> tuple:
    """(host, manifest) of the backup the job published, from its events; (None, None) when none was."""
    for event in job.events:
        res = (event.get("event_data") or {}).get("res") or {}
        if event.get("event") == "runner_on_ok" and res.get("published") and isinstance(res.get("manifest"), dict):
            return event["event_data"]["host"], res["manifest"]
    return None, None


def backup_node(job) -> str | None:
    return published(job)[0]


def backup_manifest(job) -> dict | None:
    return published(job)[1]


def explain(job) -> str:
    return f"job {job.job_id} ({job.template['name']}) {job.status}, rc {job.rc}:\n{job.stdout()[-4000:]}"


def test_status_job(jobs):
    job = jobs["Galera status"]
    assert job.status == "successful", explain(job)
    table = next(iter(job.results("Print the cluster table").values()))["msg"]
    for node in NODES:
        assert any(line.startswith(node) and " Synced " in line for line in table), table


def test_backup_job_with_the_survey_defaults(jobs):
    job = jobs["Galera backup"]
    assert job.status == "successful", explain(job)
    manifest = backup_manifest(job)
    assert manifest["result"] == "ok"
    assert manifest["encryption"], "galera_backup_encrypt=true from the job template's extra variables"
    # The survey's defaults: automatic node, the default method and verification.
    assert manifest["method"] == "mariabackup" and manifest["verify"]["level"] == "checksum"
    assert manifest["desync"]["owner"] == f"galera_backup:awx-job-{job.job_id}", "the lease owner names the AWX job"
    assert manifest["desync"]["resynced"] is True
    report = next(iter(job.results("Report the backup").values()))["msg"]
    assert manifest["id"] in report and "encrypted" in report


def test_freshness_job(jobs):
    job = jobs["Galera backup freshness"]
    assert job.status == "successful", explain(job)


def test_desync_and_resync_jobs(jobs):
    assert jobs["Galera desync"].status == "successful", explain(jobs["Galera desync"])
    assert str(jobs["desynced"]) == "1", "the desync job left galera-node2 desynced"
    assert jobs["Galera resync"].status == "successful", explain(jobs["Galera resync"])
    assert sql_admin("galera-node2", "SELECT @@wsrep_desync")[0][0] == 0
    state = sql_admin("galera-node2", "SHOW STATUS LIKE 'wsrep_local_state_comment'")[0][1]
    assert state == "Synced"


def test_restore_job(jobs):
    job = jobs["Galera restore"]
    assert job.status == "successful", explain(job)
    assert "ibdata1" in jobs["restored_files"], jobs["restored_files"]


@pytest.mark.parametrize("name", ["Galera status", "Galera backup", "Galera backup freshness", "Galera desync",
                                  "Galera resync", "Galera restore"])
def test_no_secret_in_any_artifact_or_job_event(jobs, name):
    job = jobs[name]
    assert job.events, f"{name}: no job events"
    assert awxsim.leaks(job, SECRETS) == []


def test_the_secret_search_finds_a_leak(jobs):
    """The search above is able to fail: a copy of an artifact with the password in it is found."""
    job = jobs["Galera status"]
    planted = job.artifacts / "job_events" / "planted-leak.json"
    planted.write_text(json.dumps({"stdout": "login " + PASSWORD}), encoding="utf-8")
    try:
        assert any("database password" in found for found in awxsim.leaks(job, SECRETS))
    finally:
        planted.unlink()


def test_every_shipped_job_template_ran():
    ran = {"Galera status", "Galera backup", "Galera backup freshness", "Galera desync", "Galera resync",
           "Galera restore"}
    assert {t["name"] for t in awxsim.job_templates()} == ran
