"""Trust: hostile and careless input is refused or handled, nothing changes, nobody is left desynced.

One generated playbook runs every bad input against the role and the modules (each in a block whose
rescue records the failure message), so 40 cases cost one ansible-playbook start; the playbooks
with their own host patterns run on their own. Before and after, the nodes' sensitive directories,
the backup directories, the desync state and the lease are read from the outside and compared.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import admin_connection, playbook_command, playbook_env, run_playbook

testinfra_hosts = ["galera"]
NODES = ("galera-node1", "galera-node2", "galera-node3")
PWNED = "/tmp/trust-pwned"
WEIRD_DIR = "/var/backups/trust $(touch /tmp/trust-pwned) \"q\" `id` it's"

# (case, kind, arguments, expected fragment of the failure message)
ROLE = "role"
MODULE = "module"
CASES = [
    ("dir is /", ROLE, {"galera_backup_dir": "/"}, "galera_backup_dir=/ is a system directory"),
    ("dir is the datadir", ROLE, {"galera_backup_dir": "/var/lib/mysql"}, "/var/lib/mysql is a system directory"),
    ("dir inside the datadir", ROLE, {"galera_backup_dir": "/var/lib/mysql/backups"}, "lies inside a system directory"),
    ("dir is /tmp", ROLE, {"galera_backup_dir": "/tmp"}, "galera_backup_dir=/tmp is a system directory"),
    ("dir under /etc", ROLE, {"galera_backup_dir": "/etc/cron.d"}, "lies inside a system directory"),
    ("dir relative", ROLE, {"galera_backup_dir": "backups"}, "is not an absolute path"),
    ("dir with ..", ROLE, {"galera_backup_dir": "/var/backups/../lib/mysql"}, "is not a normalised path"),
    ("dir with a newline", ROLE, {"galera_backup_dir": "/var/backups/g\n/etc/cron.d"}, "holds a control character"),
    ("dir world-writable", ROLE, {"galera_backup_dir": "/var/backups/trust-world"}, "is writable by every user"),
    ("dir of another user", ROLE, {"galera_backup_dir": "/var/backups/trust-nobody"}, "not by the configured owner"),
    ("dir is a file", ROLE, {"galera_backup_dir": "/var/backups/trust-file"}, "exists and is not a directory"),
    ("dir is a symlink", ROLE, {"galera_backup_dir": "/var/backups/trust-link"}, "is a symbolic link"),
    ("verify_dir is /", ROLE, {"galera_backup_verify": "restore", "galera_backup_verify_dir": "/"},
     "galera_backup_verify_dir=/ is a system directory"),
    ("verify_dir in datadir", ROLE, {"galera_backup_verify": "prepare", "galera_backup_dir": "/var/backups/trust-ok",
                                     "galera_backup_verify_dir": "/var/lib/mysql/v"}, "lies inside a system directory"),
    ("owner with a quote", ROLE, {"galera_backup_file_owner": "root'; touch /tmp/trust-pwned; '"},
     "galera_backup_file_owner"),
    ("group with $()", ROLE, {"galera_backup_file_group": "$(touch /tmp/trust-pwned)"}, "galera_backup_file_group"),
    ("owner unknown", ROLE, {"galera_backup_file_owner": "nosuchuser", "galera_backup_dir": "/var/backups/trust-ok"},
     "names no user on this node"),
    ("lease database with a backtick", ROLE, {"galera_backup_lease_database": "x`; DROP DATABASE mysql; --"},
     "not a plain database name"),
    ("owner with a newline", ROLE, {"galera_backup_lease_owner": "me\nyou"}, "galera_backup_lease_owner"),
    ("node is a path", ROLE, {"galera_backup_node": "../../etc"}, "galera_backup_node=../../etc is not a host"),
    ("extra args replace the option file", ROLE, {"galera_backup_extra_args": ["--defaults-file=/tmp/evil.cnf"]},
     "the option file is the collection's"),
    ("extra args redirect the target", ROLE, {"galera_backup_extra_args": ["--target-dir=/var/lib/mysql"]},
     "sets --target-dir itself"),
    ("key file missing", ROLE, {"galera_backup_encrypt": True, "galera_backup_encrypt_key_file": "/nonexistent/key",
                                "galera_backup_dir": "/var/backups/trust-ok"}, "/nonexistent/key"),
    ("key file relative", ROLE, {"galera_backup_encrypt": True, "galera_backup_encrypt_key_file": "key"},
     "galera_backup_encrypt_key_file"),
    ("encrypt without zstd", ROLE, {"galera_backup_encrypt": True, "galera_backup_encrypt_key": "k",
                                    "galera_backup_compress": "none"}, "encrypt needs galera_backup_compress=zstd"),
    ("retention 0", ROLE, {"galera_backup_retention": 0}, "galera_backup_retention=0 must be at least 1"),
    ("unknown method", ROLE, {"galera_backup_method": "rsync; id"}, "galera_backup_method"),
    ("lease ttl not a number", ROLE, {"galera_backup_lease_ttl": "1; rm -rf /"}, "galera_backup_lease_ttl"),
    ("socket missing", ROLE, {"galera_backup_login_unix_socket": "/nonexistent/mysqld.sock"}, "cannot connect"),
    ("copy destination with a shell host", ROLE,
     {"galera_backup_copies": [{"name": "evil", "type": "ssh", "host": "h; touch /tmp/trust-pwned", "path": "/x"}]},
     "galera_backup_copies[0]"),
    ("copy destination name with ..", ROLE,
     {"galera_backup_copies": [{"name": "../x", "type": "s3", "bucket": "b"}]}, "galera_backup_copies[0]"),
    ("four members expected", ROLE, {"galera_backup_cluster_size": 4}, "Expected 4 Synced members"),
    ("desync would leave too few", ROLE, {"galera_backup_min_cluster_size": 3, "galera_backup_node": "galera-node3",
                                          "galera_backup_dir": "/var/backups/trust-ok"},
     "fewer than min_cluster_size=3"),
    ("verify level unknown", ROLE, {"galera_backup_verify": "full"}, "value of galera_backup_verify must be one of"),
    ("retention not a number", ROLE, {"galera_backup_retention": "many"}, "galera_backup_retention"),
    ("tool not installed", ROLE, {"galera_backup_method": "xtrabackup", "galera_backup_dir": "/var/backups/trust-ok"},
     "lacks xtrabackup"),
    ("wrong password", ROLE, {"galera_backup_login_user": "dbtools_admin", "galera_backup_login_password": "wrong"},
     "Access denied"),
    ("prepare of a dump", ROLE, {"galera_backup_method": "mysqldump", "galera_backup_verify": "prepare"},
     "needs a physical backup"),
    ("dir under /proc", ROLE, {"galera_backup_dir": "/proc/galera"}, "galera_backup_dir=/proc/galera lies inside"),
    ("negative lease ttl", ROLE, {"galera_backup_lease_ttl": -5}, "galera_backup_lease_ttl=-5 must be at least 10"),
    ("negative drain timeout", ROLE, {"galera_backup_drain_timeout": -1},
     "galera_backup_drain_timeout=-1 must not be negative"),
    ("negative sample", ROLE, {"galera_backup_sample_seconds": -2},
     "galera_backup_sample_seconds=-2 must not be negative"),
    ("desync lease database", MODULE, ("dbtools.galera.galera_desync",
                                       {"state": "desynced", "owner": "t", "lease_database": "a`b"}),
     "not a plain database name"),
    ("desync empty owner", MODULE, ("dbtools.galera.galera_desync", {"state": "desynced", "owner": " "}),
     "owner must be"),
    ("restore into /", MODULE, ("dbtools.galera.galera_restore",
                                {"path": "/var/backups/trust-ok", "datadir": "/"}), "not /"),
    ("restore over the live datadir", MODULE, ("dbtools.galera.galera_restore",
                                               {"path": "/var/backups/trust-ok", "datadir": "/var/lib/mysql"}),
     "is not an empty directory"),
    ("restore an id with ..", MODULE, ("dbtools.galera.galera_restore",
                                       {"path": "/var/backups", "id": "../../etc", "datadir": "/var/tmp/trust-r"}),
     "no complete backup ../../etc"),
    ("prune /", MODULE, ("dbtools.galera.galera_backup_prune", {"path": "/", "cluster": "dbtools", "keep": 1}),
     "is a system directory"),
    ("copy the datadir", MODULE, ("dbtools.galera.galera_backup_copy",
                                  {"src": "/var/lib/mysql", "dest": {"type": "ssh", "host": "h", "path": "/x"}}),
     "not a complete backup"),
]


def unsafe(value, indent: int) -> str:
    """YAML for a value, every string tagged !unsafe so Ansible never templates it."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "\n" + "\n".join(f"{pad}{json.dumps(k)}: {unsafe(v, indent + 2)}" for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "[]"
        return "\n" + "\n".join(f"{pad}- {unsafe(v, indent + 2).lstrip()}" for v in value)
    if isinstance(value, str):
        return "!unsafe " + json.dumps(value)
    return json.dumps(value)


def batch_playbook(results: str) -> str:
    lines = ["---", "- name: Hostile and careless input", "  hosts: galera", "  gather_facts: false",
             "  vars:", "    galera_backup_sample_seconds: 0", "  tasks:"]
    for index, (name, kind, args, _fragment) in enumerate(CASES):
        record_ok = (f"        - name: Record case {index}\n          ansible.builtin.set_fact:\n"
                     f"            trust_results: \"{{{{ trust_results | default({{}}) | combine({{'{index}': "
                     f"{{'failed': false}}}}) }}}}\"\n")
        record_failed = (f"        - name: Record case {index} failed\n          ansible.builtin.set_fact:\n"
                         f"            trust_results: \"{{{{ trust_results | default({{}}) | combine({{'{index}': "
                         f"{{'failed': true, 'msg': ansible_failed_result.msg | default('') | string}}}}) }}}}\"\n")
        lines.append(f"    - name: Case {index}")
        lines.append("      block:")
        if kind == ROLE:
            lines.append(f"        - name: Back up ({json.dumps(name)})")
            lines.append("          ansible.builtin.include_role:")
            lines.append("            name: dbtools.galera.galera_backup")
            lines.append(f"          vars:{unsafe(args, 12)}")
        else:
            module, params = args
            lines.append(f"        - name: Module ({json.dumps(name)})")
            lines.append(f"          {module}:{unsafe(params, 12)}")
            lines.append("          when: inventory_hostname == 'galera-node3'")
        lines.append(record_ok.rstrip("\n"))
        lines.append("      rescue:")
        lines.append(record_failed.rstrip("\n"))
    lines += ["", "- name: Write the results", "  hosts: localhost", "  gather_facts: false", "  tasks:",
              "    - name: Write them", "      ansible.builtin.copy:",
              f"        dest: {json.dumps(results)}",
              "        content: \"{{ dict(groups['galera'] | zip(groups['galera'] | map('extract', hostvars) "
              "| map(attribute='trust_results', default={}))) | to_json }}\"",
              "        mode: \"0600\""]
    return "\n".join(lines) + "\n"


def node_state(node: str) -> str:
    """What must not change on a node: modes and owners of sensitive directories, the backup area."""
    script = ("stat -c '%n %a %U %G' / /tmp /etc /var/lib/mysql /var/lib /var/backups /var/backups/trust-world "
              "/var/backups/trust-nobody /var/backups/trust-file 2>&1; ls -la --time-style=+ /var/backups; "
              "ls -la --time-style=+ /var/lib/mysql | grep -v -e ib_logfile -e ibtmp -e gcache -e grastate "
              "-e '\\.err$' -e aria_log -e 'mysql.sock' -e tc.log -e ibdata -e 'undo0' -e 'total '; "
              "test -e /tmp/trust-pwned && echo PWNED; cat /etc/crontab | md5sum")
    return subprocess.run(["docker", "exec", node, "sh", "-c", script], capture_output=True, text=True,
                          check=True).stdout


def desynced_and_lease():
    out = {}
    for node in NODES:
        conn = admin_connection(node)
        with conn.cursor() as cur:
            cur.execute("SELECT @@wsrep_desync")
            out[node] = cur.fetchone()[0]
            cur.execute("SET SESSION wsrep_sync_wait = 1")
            try:
                cur.execute("SELECT COUNT(*) FROM dbtools_galera.desync_lease")
                out["lease"] = cur.fetchone()[0]
            except Exception:  # no lease table yet
                out["lease"] = 0
        conn.close()
    return out


@pytest.fixture(scope="module")
def batch(request, tmp_path_factory):
    before = {n: node_state(n) for n in NODES}
    work = tmp_path_factory.mktemp("trust")
    results = work / "results.json"
    playbook = work / "trust_batch.yml"
    playbook.write_text(batch_playbook(str(results)))
    run = run_playbook(request, str(playbook), timeout=1800)
    assert run.returncode == 0, run.output[-4000:]
    after = {n: node_state(n) for n in NODES}
    return dict(results=json.loads(results.read_text()), before=before, after=after, output=run.output)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_each_bad_input_is_refused_with_a_clear_message(batch, index):
    name, kind, _args, fragment = CASES[index]
    outcomes = {host: r.get(str(index)) for host, r in batch["results"].items()}
    failed = {host: o for host, o in outcomes.items() if o and o.get("failed")}
    assert failed, f"case {name!r} was not refused on any node: {outcomes}"
    messages = " | ".join(o.get("msg") or "" for o in failed.values())
    assert fragment in " ".join(messages.split()), f"case {name!r}: {messages[:2000]}"


def test_nothing_changed_on_any_node_and_nobody_is_desynced(batch):
    assert len(CASES) >= 30
    for node in NODES:
        assert "PWNED" not in batch["after"][node], f"a hostile value ran a command on {node}"
        assert batch["after"][node] == batch["before"][node], (
            f"{node} changed:\nBEFORE\n{batch['before'][node]}\nAFTER\n{batch['after'][node]}")
    state = desynced_and_lease()
    assert state == {"galera-node1": 0, "galera-node2": 0, "galera-node3": 0, "lease": 0}, state
    for node in NODES:
        conn = admin_connection(node)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%'")
            assert cur.fetchone()[0] == 0, f"a backup lock was left on {node}"
        conn.close()


def test_the_playbooks_take_exactly_one_node(request):
    for playbook in ("dbtools.galera.desync", "dbtools.galera.resync"):
        for pattern in ("galera", "galera-node1:galera-node2", "all", "galera-node*"):
            run = run_playbook(request, playbook, "-e", f"galera_node={pattern}", "-e", "galera_owner=trust")
            assert run.returncode != 0, f"{playbook} ran with galera_node={pattern}"
            assert "exactly one host" in run.output, run.output[-2000:]
    assert desynced_and_lease() == {"galera-node1": 0, "galera-node2": 0, "galera-node3": 0, "lease": 0}


def test_a_hostile_directory_name_is_just_a_name_and_weird_tables_verify(request):
    """Shell metacharacters in a path are harmless (never in a shell string): the backup lands in a
    directory of exactly that name; schema and table names with dots, quotes, backticks and unicode are
    restored and checksummed by the restore test, and the table named like an INTO OUTFILE injection
    stays a name."""
    run = run_playbook(request, "dbtools.galera.backup", "-e", json.dumps({
        "galera_backup_dir": WEIRD_DIR, "galera_backup_method": "mysqldump", "galera_backup_verify": "restore",
        "galera_backup_verify_sample": 0, "galera_backup_node": "galera-node2", "galera_backup_sample_seconds": 0}))
    assert run.returncode == 0, run.output[-4000:]
    listing = subprocess.run(["docker", "exec", "galera-node2", "ls", "-1", WEIRD_DIR], capture_output=True,
                             text=True, check=True).stdout.split()
    assert len(listing) == 1 and listing[0].startswith("dbtools_galera-node2_"), listing
    manifest = json.loads(subprocess.run(["docker", "exec", "galera-node2", "cat",
                                          f"{WEIRD_DIR}/{listing[0]}/manifest.json"],
                                         capture_output=True, text=True, check=True).stdout)
    checks = manifest["verify"]["checksums"]
    weird = {(v["schema"], v["table"]): v["rows"] for v in checks.values() if v["schema"] == 'trust.we"ird'}
    assert weird == {('trust.we"ird', "a`b"): 100, ('trust.we"ird', "q'uote"): 50, ('trust.we"ird', "ü-ñ ☃"): 7,
                     ('trust.we"ird', "x`; SELECT 1 INTO OUTFILE '/tmp/trust-pwned' -- x"): 3}, weird
    for node in NODES:
        probe = subprocess.run(["docker", "exec", node, "sh", "-c",
                                "ls /tmp/trust-pwned /var/lib/mysql/trust-pwned 2>/dev/null; "
                                "find / -xdev -name trust-pwned 2>/dev/null"],
                               capture_output=True, text=True, check=False).stdout
        assert not probe.strip(), f"{node}: {probe}"
    subprocess.run(["docker", "exec", "galera-node2", "rm", "-rf", WEIRD_DIR], check=True)


# ---------------------------------------------------------------------------------------------
# Concurrent runs

def start_backup(request, node, *extra):
    cmd = playbook_command(request, "dbtools.galera.backup", "-e", f"galera_backup_node={node}",
                           "-e", "galera_backup_sample_seconds=0", *extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=playbook_env())


def finish(proc, timeout=900):
    out, _err = proc.communicate(timeout=timeout)
    return proc.returncode, " ".join(out.split())


def docker(node, *argv, check=True):
    return subprocess.run(["docker", "exec", node, *argv], capture_output=True, text=True, check=check)


def listing(node, directory):
    return sorted(docker(node, "ls", "-1A", directory, check=False).stdout.split())


def run_dirs(node):
    return [n for n in docker(node, "ls", "-1A", "/run/dbtools-galera", check=False).stdout.split()
            if n.startswith("run-")]


def test_two_runs_at_once_on_the_same_node_one_backs_up_and_nothing_is_lost(request):
    directory = "/var/backups/trust-same"
    procs = [start_backup(request, "galera-node3", "-e", f"galera_backup_dir={directory}") for _attempt in range(2)]
    results = [finish(p) for p in procs]
    codes = sorted(rc for rc, _out in results)
    print(f"\ntwo runs on galera-node3 at once: return codes {codes}")
    assert codes[0] == 0 and codes[1] != 0, [r[1][-1500:] for r in results]
    loser = next(out for rc, out in results if rc != 0)
    assert ("lease" in loser or "already desynced" in loser), loser[-2000:]
    names = listing("galera-node3", directory)
    assert len(names) == 1 and not names[0].endswith((".partial", ".json")), names
    assert docker("galera-node3", "test", "-f", f"{directory}/{names[0]}/manifest.json", check=False).returncode == 0
    assert run_dirs("galera-node3") == []
    assert desynced_and_lease() == {"galera-node1": 0, "galera-node2": 0, "galera-node3": 0, "lease": 0}


def verifying_run(node):
    """The pid of a backup run on ``node`` that is verifying (its state file says so), or None."""
    script = ("for d in /run/dbtools-galera/run-*; do [ -f \"$d/state.json\" ] && "
              "grep -q '\"step\": \"verify: ' \"$d/state.json\" && cat \"$d/runner.pid\" && exit 0; done; exit 1")
    out = docker(node, "sh", "-c", script, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def test_a_run_started_while_another_verifies_is_refused_and_deletes_nothing(request):
    """The lease is held (renewed) until the node is resynced, verification included: a run started
    while the first one's restore test is slowed down is refused, and the first run's partial backup and
    verification copy survive it."""
    directory = "/var/backups/trust-verify"
    first = start_backup(request, "galera-node3", "-e", f"galera_backup_dir={directory}",
                         "-e", "galera_backup_verify=restore", "-e", "galera_backup_lease_ttl=15")
    deadline = time.monotonic() + 300
    pid = None
    try:
        while time.monotonic() < deadline and pid is None:
            assert first.poll() is None, first.stdout.read()[-3000:]
            pid = verifying_run("galera-node3")
            time.sleep(0.1)
        assert pid, "the first run never started its verification"
        # The run is the leader of its process group: stop all of it (a very slow verification).
        docker("galera-node3", "kill", "-s", "STOP", "--", f"-{pid}")
        time.sleep(25)  # longer than the lease's 15 s: only the renewal keeps it
        state = desynced_and_lease()
        assert state["galera-node3"] == 1 and state["lease"] == 1, state
        partial = [n for n in listing("galera-node3", directory) if n.endswith(".partial")]
        assert len(partial) == 1, listing("galera-node3", directory)
        for node in ("galera-node3", "galera-node2"):
            rc, out = finish(start_backup(request, node, "-e", f"galera_backup_dir={directory}",
                                          "-e", "galera_backup_lease_ttl=15"))
            assert rc != 0, f"a second run on {node} was not refused"
            assert "lease" in out, out[-2000:]
        assert [n for n in listing("galera-node3", directory) if n.endswith(".partial")] == partial
    finally:
        if pid:
            docker("galera-node3", "kill", "-s", "CONT", "--", f"-{pid}", check=False)
        if first.poll() is None and not pid:
            first.kill()
    rc, out = finish(first)
    assert rc == 0, out[-4000:]
    names = listing("galera-node3", directory)
    assert len(names) == 1 and names[0] == partial[0][: -len(".partial")], names
    assert desynced_and_lease() == {"galera-node1": 0, "galera-node2": 0, "galera-node3": 0, "lease": 0}
    docker("galera-node3", "rm", "-rf", directory)
