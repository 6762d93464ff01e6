"""The connection precedence of docs/awx/README.md, through the real playbooks, role and credential type.

Jobs run as AWX runs them (awxsim: ansible-runner, the credential's injectors rendered AWX's way,
every string ``!unsafe``) against hosts with ``ansible_connection=local`` whose connection variables
point at sockets and ports where no server listens. Each module's connection error names the login it
tried (``user@socket`` or ``user@host:port``), so the login each host resolved is read from the job's
events; nothing connects anywhere. The password, which no message shows, is read from the role's
defaults (where the precedence lives) by a small playbook that loads them as the playbooks do.
"""

from __future__ import annotations

import itertools
import re
import sys

import pytest

import awxsim

NOWHERE = "/nonexistent/dbtools-galera-awx-test"
# Per-host connection settings, as an operator puts them in the inventory.
HOSTVARS = {
    "sock": dict(galera_login_unix_socket=f"{NOWHERE}/sock.sock", galera_login_user="inv_user",
                 galera_login_password="inv-pw"),
    "tcp": dict(galera_login_host="127.0.0.1", galera_login_port=9),
    "bare": {},
    "rolevar": dict(galera_backup_login_user="role_user", galera_login_unix_socket=f"{NOWHERE}/rolevar.sock"),
}
CRED_EMPTY_SOCKET = dict(login_user="cred_user", login_password="cred-pw")
CRED_SOCKET = dict(CRED_EMPTY_SOCKET, login_unix_socket=f"{NOWHERE}/cred.sock")
OS_USER = "the current OS user"
ids = itertools.count(9100)


def inventory(hosts: dict | None = None) -> dict:
    hosts = HOSTVARS if hosts is None else hosts
    common = dict(ansible_connection="local", ansible_python_interpreter=sys.executable)
    return {"all": {"children": ["galera"]},
            "galera": {"hosts": list(hosts)},
            "_meta": {"hostvars": {h: dict(common, **v) for h, v in hosts.items()}}}


DEFAULTS_PLAYBOOK = """\
- name: Resolve the login variables as the role and the playbooks do
  hosts: galera
  gather_facts: false
  vars_files:
    - roles/galera_backup/defaults/main.yml
  tasks:
    - name: Resolved
      ansible.builtin.debug:
        msg:
          user: "{{ galera_backup_login_user }}"
          password: "{{ galera_backup_login_password }}"
          socket: "{{ galera_backup_login_unix_socket }}"
          host: "{{ galera_backup_login_host }}"
          port: "{{ galera_backup_login_port }}"
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One project checkout for every job of this module (AWX syncs a project once, too)."""
    path = tmp_path_factory.mktemp("awx")
    awxsim.project_copy(path / "project")
    (path / "project" / "precedence.yml").write_text(DEFAULTS_PLAYBOOK, encoding="utf-8")
    return path


def run(base, template_name, credential=None, cred_type=None, answers=None, playbook=None):
    template = dict(awxsim.job_template(template_name))
    if playbook:
        template["playbook"] = playbook
    creds = [(cred_type or awxsim.credential_type(), credential)] if credential else []
    job = awxsim.Job(base, next(ids), template, inventory(), answers=answers, credentials=creds).run(timeout=300)
    return job


def logins(job) -> dict:
    """{host: 'user@where'} from each host's connection error."""
    out = {}
    for host, msg in job.failures().items():
        found = re.search(r"cannot connect to (.+?): \(\d+\)", msg or "")
        out[host] = found.group(1) if found else f"<no connection error: {msg!r}>"
    return out


# What each host's login resolves to: {credential: {host: user@where}} (None: only the user is checked).
STATUS = {
    "none": {"sock": f"inv_user@{NOWHERE}/sock.sock", "tcp": f"{OS_USER}@127.0.0.1:9", "bare": OS_USER,
             "rolevar": f"{OS_USER}@{NOWHERE}/rolevar.sock"},
    # The issue: an empty socket field must leave each host's socket in force.
    "empty_socket": {"sock": f"cred_user@{NOWHERE}/sock.sock", "tcp": "cred_user@127.0.0.1:9", "bare": "cred_user",
                     "rolevar": f"cred_user@{NOWHERE}/rolevar.sock"},
    # A socket in the credential replaces every host's (a socket wins over TCP).
    "socket": {"sock": f"cred_user@{NOWHERE}/cred.sock", "tcp": f"cred_user@{NOWHERE}/cred.sock", "bare": "cred_user",
               "rolevar": f"cred_user@{NOWHERE}/cred.sock"},
}
# The role: its own galera_backup_login_* (here per host) beats the credential.
ROLE = {k: dict(v, rolevar="role_user@" + v["rolevar"].split("@", 1)[1]) for k, v in STATUS.items()}
CREDENTIALS = {"none": None, "empty_socket": CRED_EMPTY_SOCKET, "socket": CRED_SOCKET}


def check(found: dict, expected: dict):
    for host, want in expected.items():
        got = found.get(host, "<no failure>")
        if "@" in want:
            assert got == want, f"{host}: logged in as {got}, expected {want}"
        else:
            assert got.startswith(want + "@"), f"{host}: logged in as {got}, expected user {want}"


@pytest.mark.parametrize("credential", list(CREDENTIALS))
def test_status_playbook(base, credential):
    job = run(base, "Galera status", CREDENTIALS[credential])
    assert job.status == "failed"
    check(logins(job), STATUS[credential])


@pytest.mark.parametrize("credential", list(CREDENTIALS))
def test_backup_role(base, credential):
    job = run(base, "Galera backup", CREDENTIALS[credential])
    assert job.status == "failed"
    check(logins(job), ROLE[credential])


@pytest.mark.parametrize("template, node", [("Galera desync", "sock"), ("Galera resync", "tcp")])
def test_desync_and_resync_playbooks(base, template, node):
    job = run(base, template, CRED_EMPTY_SOCKET, answers=dict(galera_node=node, galera_owner="awx-test"))
    found = logins(job)
    assert set(found) == {node}
    check(found, {node: STATUS["empty_socket"][node]})


@pytest.mark.parametrize("credential, expected", [
    ("none", {"sock": ("inv_user", "inv-pw", f"{NOWHERE}/sock.sock", "", 3306),
              "tcp": ("", "", "", "127.0.0.1", 9), "bare": ("", "", "", "", 3306)}),
    # The credential's user brings its password, even where the inventory has another user's.
    ("empty_socket", {"sock": ("cred_user", "cred-pw", f"{NOWHERE}/sock.sock", "", 3306),
                      "tcp": ("cred_user", "cred-pw", "", "127.0.0.1", 9)}),
    ("socket", {"sock": ("cred_user", "cred-pw", f"{NOWHERE}/cred.sock", "", 3306)}),
])
def test_role_defaults_resolve_user_and_password_together(base, credential, expected):
    job = run(base, "Galera status", CREDENTIALS[credential], playbook="precedence.yml")
    assert job.status == "successful", job.stdout()[-2000:]
    resolved = {h: r["msg"] for h, r in job.results("Resolved").items()}
    for host, (user, password, socket, host_, port) in expected.items():
        assert resolved[host] == dict(user=user, password=password, socket=socket, host=host_, port=port), host


def test_an_injector_of_galera_login_variables_would_override_the_inventory(base):
    """The old credential type (galera_login_* injected, "" for an empty socket field) breaks the per-host
    socket: this is what the tests above catch."""
    old = awxsim.credential_type()
    old["injectors"]["extra_vars"] = {"galera_login_user": "{{ login_user }}",
                                      "galera_login_password": "{{ login_password }}",
                                      "galera_login_unix_socket": "{{ login_unix_socket }}"}
    job = run(base, "Galera status", CRED_EMPTY_SOCKET, cred_type=old)
    found = logins(job)
    assert found["sock"].startswith("cred_user@") and found["sock"] != STATUS["empty_socket"]["sock"], found
