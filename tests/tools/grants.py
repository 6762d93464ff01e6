"""The least privileges dbtools.galera needs, measured on a real server, and the SQL that grants them.

    python3 tests/tools/grants.py measure [--image IMAGE ...] [--json OUT]   # ~10 min per image
    python3 tests/tools/grants.py sql --version 10.11 [--user dbtools] [--host localhost --host '10.0.0.%']

``measure`` starts throwaway single-node Galera servers from the project's node image (containers
``dbtools-grants-*`` on their own network ``dbtools-grants``, never the shared test cluster), creates a
probe account and runs every operation of the collection as that account: the modules (galera_info,
galera_desync with the lease and its watchdog, an expired-lease takeover over TCP to another server,
galera_wait_synced), the role's own SQL (its login check, the table list of the verification) and the
backup tools with exactly the command lines the role builds (``_tools``), with the binary log off
and on. For each operation it starts from USAGE and adds the privilege the error names (else the next
candidate) until the operation works, then removes each privilege again to prove it is needed,
recording the exact error. Finally the whole account (``account_grants``) is checked: every operation
works with it, and without any one of its privileges some operation fails. "Works" is checked from the
outside: a backup must hold the Galera position (and the binary log position when log_bin is on), a
dump every view, trigger, routine and event of a fixture schema, a listing every table; several tools
and queries skip what the user may not see without any error.

``sql`` prints the statements of ``account_grants`` for a server version: the one home of the rule that
docs/grants.md shows and extensions/molecule/resources/prepare.yml applies.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

LEASE_DB = "dbtools_galera"

# --------------------------------------------------------------------------------------------------
# The account: what was measured (see docs/grants.md for the errors each missing privilege gives).


def parse_version(text: str) -> tuple:
    """``10.11.19-MariaDB-0+deb12u1`` or ``11.8`` to ``(10, 11)``."""
    match = re.match(r"^\s*(\d+)\.(\d+)", str(text))
    if not match:
        raise ValueError(f"not a server version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def account_grants(version: tuple) -> list:
    """``[(privileges, object, why)]`` the collection's account needs on MariaDB ``version`` (major, minor).

    One account runs the modules, the watchdog and the backup tools (the role hands the tools the same
    login). Measured on 10.11.19 and 11.8 by ``measure``.
    """
    del version  # 10.11 and 11.8 need the same set; what differs is why (see docs/grants.md)
    return [
        ("SUPER, RELOAD, PROCESS, BINLOG MONITOR", "*.*",
         "SUPER: SET GLOBAL wsrep_desync; RELOAD, PROCESS: mariabackup (RELOAD: mydumper too); "
         "BINLOG MONITOR: SHOW MASTER STATUS of mariabackup, binary log on or off (on 10.11 SUPER also allows "
         "it, on 11.8 only BINLOG MONITOR)"),
        ("SELECT, SHOW VIEW, TRIGGER, EVENT", "*.*",
         "the dumps; SELECT: also the table list of the verification, the size estimate, "
         "mysql.wsrep_cluster_members"),
        ("CREATE, SELECT, INSERT, UPDATE, DELETE", f"`{LEASE_DB}`.*",
         "the desync lease and desync_events (CREATE only while they do not exist)"),
    ]


def quote_string(text: str) -> str:
    return "'" + str(text).replace("\\", "\\\\").replace("'", "\\'") + "'"


def host_part(text: str) -> str:
    """An account's host part; an address with a prefix (``172.27.0.2/16``, ``10.0.0.0/24``) becomes the
    network in MariaDB's ``address/netmask`` form (``172.27.0.0/255.255.0.0``), which MariaDB matches."""
    if re.fullmatch(r"[0-9.]+/\d{1,2}", text):
        network = ipaddress.ip_interface(text).network
        return f"{network.network_address}/{network.netmask}"
    return text


def account_sql(version: tuple, user: str = "dbtools", hosts=("localhost", "10.0.0.%"),
                password: str | None = None, without: tuple | None = None) -> list:
    """CREATE USER and GRANT statements for ``user`` at every host part of ``hosts``.

    ``password`` None writes a placeholder to replace. Idempotent: re-running it sets the password
    and leaves exactly these privileges (the account's grants are revoked first). ``without``
    ``(privilege, object)`` leaves that one out (the tests' account missing one grant).
    """
    secret = quote_string(password) if password is not None else "'CHANGE-ME'"
    out = []
    for host in hosts:
        account = f"{quote_string(user)}@{quote_string(host_part(host))}"
        out.append(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {secret};")
        out.append(f"ALTER USER {account} IDENTIFIED BY {secret};")
        out.append(f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account};")
        for privileges, on, _why in account_grants(version):
            names = [p.strip() for p in privileges.split(",")]
            if without and without[1] == on:
                names = [p for p in names if p != without[0]]
            if names:
                out.append(f"GRANT {', '.join(names)} ON {on} TO {account};")
    return out


# --------------------------------------------------------------------------------------------------
# Throwaway servers

NETWORK = "dbtools-grants"
SUBNET = "10.89.0.0/24"
PROBE_USER = "probe"
PROBE_PASSWORD = "probe-pw-4c1d"
PROBE_HOSTS = ("localhost", "10.89.0.%")
CNF = "/root/probe.cnf"  # the probe's option file in the container, as the role writes one for the tools
ROOT_CNF = "/root/root.cnf"
WORK = "/tmp/probe"

FIXTURE = """
DROP DATABASE IF EXISTS grants_fixture;
CREATE DATABASE grants_fixture;
CREATE TABLE grants_fixture.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB;
INSERT INTO grants_fixture.t SELECT seq, CONCAT('v', seq) FROM grants_fixture.seq_1_to_100;
CREATE TABLE grants_fixture.log (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME) ENGINE=InnoDB;
CREATE VIEW grants_fixture.v AS SELECT id FROM grants_fixture.t WHERE id < 10;
CREATE TRIGGER grants_fixture.trg AFTER INSERT ON grants_fixture.t FOR EACH ROW INSERT INTO grants_fixture.log (at) VALUES (NOW());
CREATE PROCEDURE grants_fixture.p() SELECT COUNT(*) FROM grants_fixture.t;
CREATE FUNCTION grants_fixture.f() RETURNS INT DETERMINISTIC RETURN 42;
CREATE EVENT grants_fixture.e ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM grants_fixture.log;
"""

# Runs argv with stdout to a file (no shell): python3 -c RUN_TO_FILE out argv...
RUN_TO_FILE = ("import subprocess, sys\n"
               "with open(sys.argv[1], 'wb') as out, open(sys.argv[2], 'wb') as err:\n"
               "    sys.exit(subprocess.run(sys.argv[3:], stdout=out, stderr=err).returncode)\n")


def docker(*args, check: bool = True, stdin: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, check=check,
                          timeout=timeout)


class Server:
    """One single-node Galera cluster in a throwaway container."""

    def __init__(self, name: str, image: str):
        self.name = name
        self.image = image
        self.node_name = name.replace("dbtools-", "")
        self.log_bin = False

    def exec(self, *argv, stdin: str | None = None, check: bool = False, timeout: int = 600):
        return docker("exec", "-i", self.name, *argv, stdin=stdin, check=check, timeout=timeout)

    @property
    def ip(self) -> str:
        out = docker("inspect", self.name).stdout
        return json.loads(out)[0]["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]

    def create(self) -> None:
        docker("rm", "-f", self.name, check=False)
        docker("run", "-d", "--name", self.name, "--hostname", self.node_name, "--network", NETWORK, self.image)

    def start(self, log_bin: bool) -> None:
        """(Re)start the server as a new single-node cluster, with or without the binary log."""
        self.exec("galera-node", "stop", check=True)
        cnf = ("[mariadb]\nwsrep_cluster_address = gcomm://\n"
               f"wsrep_node_name = {self.node_name}\nwsrep_node_address = {self.ip}\n")
        if log_bin:
            cnf += "log_bin = mariadb-bin\nserver_id = 1\nlog_slave_updates = ON\n"
        self.exec("tee", "/etc/mysql/mariadb.conf.d/70-node.cnf", stdin=cnf, check=True)
        self.exec("galera-node", "start", "--new-cluster", check=True)
        self.log_bin = log_bin
        self.exec("sh", "-c", f"umask 077; printf '[client]\\nuser={PROBE_USER}\\npassword={PROBE_PASSWORD}\\n' > {CNF};"
                  f" printf '[client]\\nuser=root\\n' > {ROOT_CNF}", check=True)

    def sql(self, query: str, user: bool = False) -> subprocess.CompletedProcess:
        cnf = CNF if user else ROOT_CNF
        return self.exec("mariadb", f"--defaults-extra-file={cnf}", "-N", "-B", stdin=query)

    def root(self, query: str) -> str:
        done = self.sql(query)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: {query[:200]!r}: {done.stderr.strip()}")
        return done.stdout

    def version(self) -> tuple:
        return parse_version(self.root("SELECT VERSION()"))

    def privilege_names(self) -> set:
        return {line.split("\t")[0].upper() for line in self.root("SHOW PRIVILEGES").splitlines()}

    def grant(self, grants, hosts=PROBE_HOSTS) -> None:
        """The probe account at ``hosts`` with exactly ``grants`` (``"PRIV ON obj"``), nothing else."""
        statements = []
        for row in self.root(f"SELECT Host FROM mysql.user WHERE User = {quote_string(PROBE_USER)}").splitlines():
            statements.append(f"DROP USER {quote_string(PROBE_USER)}@{quote_string(row.strip())};")
        for host in hosts:
            account = f"{quote_string(PROBE_USER)}@{quote_string(host)}"
            statements.append(f"CREATE USER {account} IDENTIFIED BY {quote_string(PROBE_PASSWORD)};")
            statements.extend(f"GRANT {g} TO {account};" for g in grants)
        self.root("\n".join(statements))

    def reset(self) -> None:
        """Back to a Synced node with no lease, no leftovers of an earlier probe."""
        self.root("SET GLOBAL wsrep_desync = OFF")
        for _i in range(100):
            if self.root("SHOW GLOBAL STATUS LIKE 'wsrep_local_state'").split()[-1] == "4":
                break
            time.sleep(0.2)
        self.exec("rm", "-rf", WORK)
        self.exec("mkdir", "-p", WORK)

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


# --------------------------------------------------------------------------------------------------
# Operations

@dataclass
class Outcome:
    ok: bool
    error: str = ""
    warnings: list = field(default_factory=list)


def ansible_tasks(server: Server, tasks: list, timeout: int = 300) -> list:
    """Run module tasks on ``server`` (connection: docker); [(name, result)] of each task that ran."""
    login = dict(login_user=PROBE_USER, login_password=PROBE_PASSWORD, config_file="/nonexistent.cnf")
    play = [dict(hosts="all", gather_facts=False, tasks=[
        dict(name=t["name"], ignore_errors=True, **{t["module"]: dict(login, **t["args"])}) for t in tasks])]
    with tempfile.TemporaryDirectory(prefix="dbtools-grants.") as tmp:
        book = os.path.join(tmp, "play.yml")
        inventory = os.path.join(tmp, "inventory.ini")
        with open(book, "w", encoding="utf-8") as handle:
            json.dump(play, handle)
        with open(inventory, "w", encoding="utf-8") as handle:
            handle.write(f"{server.name} ansible_connection=community.docker.docker "
                         "ansible_python_interpreter=/usr/bin/python3\n")
        env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0",
                   ANSIBLE_COLLECTIONS_PATH=os.environ.get("ANSIBLE_COLLECTIONS_PATH",
                                                           os.path.join(ROOT, ".build", "collections")))
        done = subprocess.run(["ansible-playbook", "-i", inventory, book], capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    try:
        data = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError as exc:
        raise RuntimeError(f"ansible-playbook: {done.stdout[-2000:]} {done.stderr[-2000:]}") from exc
    out = []
    for task in data["plays"][0]["tasks"]:
        out.append((task["task"]["name"], task["hosts"][server.name]))
    return out


def module_outcome(results: list, check=None) -> Outcome:
    warnings = []
    for name, result in results:
        warnings.extend(result.get("warnings") or [])
        if result.get("failed"):
            return Outcome(False, f"{name}: {result.get('msg')}", warnings)
    if check:
        problem = check(dict(results))
        if problem:
            return Outcome(False, problem, warnings)
    return Outcome(True, "", warnings)


class Lab:
    """Two servers: A, where everything runs, and B, the 'other node' of an expired-lease takeover."""

    def __init__(self, image: str):
        tag = re.sub(r"[^a-z0-9]+", "-", image.split(":")[-1].lower()).strip("-")[:20]
        self.a = Server(f"dbtools-grants-{tag}-a", image)
        self.b = Server(f"dbtools-grants-{tag}-b", image)
        self.mydumper = False
        self.version = None
        self.privileges = set()

    def up(self) -> None:
        if docker("network", "inspect", NETWORK, check=False).returncode != 0:
            docker("network", "create", "--subnet", SUBNET, NETWORK)
        for server in (self.a, self.b):
            server.create()
            server.start(log_bin=False)
        self.version = self.a.version()
        self.privileges = self.a.privilege_names()
        self.a.root(FIXTURE)
        self.mydumper = self.a.exec("sh", "-c", "command -v mydumper").returncode == 0

    def down(self) -> None:
        for server in (self.a, self.b):
            server.remove()


def lease_schema(server: Server, present: bool) -> None:
    """The lease tables as the collection creates them (present), or none at all."""
    _lease = collection("_lease")
    if not present:
        server.root(f"DROP DATABASE IF EXISTS {LEASE_DB}")
        return
    server.root(f"CREATE DATABASE IF NOT EXISTS {LEASE_DB};"
                f"CREATE TABLE IF NOT EXISTS {LEASE_DB}.{_lease.TABLE} ({_lease.LEASE_COLUMNS}) ENGINE=InnoDB;"
                f"CREATE TABLE IF NOT EXISTS {LEASE_DB}.{_lease.EVENTS_TABLE} ({_lease.EVENTS_COLUMNS}) ENGINE=InnoDB;"
                f"DELETE FROM {LEASE_DB}.{_lease.TABLE}; DELETE FROM {LEASE_DB}.{_lease.EVENTS_TABLE};")


def collection(name: str):
    """A module_utils module of this checkout's collection (the code the measurement is about)."""
    path = os.path.join(ROOT, ".build", "collections")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(f"ansible_collections.dbtools.galera.plugins.module_utils.{name}")


DESYNC = dict(owner="probe", min_cluster_size=0, poll_interval=0.2, lease_ttl=300, timeout=60, drain_timeout=30)


def watchdog_log_mark(server: Server) -> int:
    done = server.exec("sh", "-c", "wc -c < /var/log/dbtools-galera/watchdog.log 2>/dev/null || echo 0")
    return int((done.stdout.strip() or "0"))


def watchdog_failures(server: Server, since: int) -> list:
    done = server.exec("tail", "-c", f"+{since + 1}", "/var/log/dbtools-galera/watchdog.log")
    return [line for line in done.stdout.splitlines() if "check failed" in line or "denied" in line.lower()]


def wait_disarmed(server: Server, seconds: float = 20) -> None:
    """Until no watchdog runs (it disarms within a check once the lease is gone; its pid file goes with it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if server.exec("sh", "-c", "ls /run/dbtools-galera/watchdog-*.pid 2>/dev/null").stdout.strip() == "":
            return
        time.sleep(0.5)


def op_desync(lab: Lab, schema: bool) -> Outcome:
    a = lab.a
    lease_schema(a, schema)
    mark = watchdog_log_mark(a)
    results = ansible_tasks(a, [
        dict(name="desync", module="dbtools.galera.galera_desync", args=dict(DESYNC, state="desynced")),
        dict(name="resync", module="dbtools.galera.galera_desync", args=dict(DESYNC, state="synced")),
    ])

    def check(by_name):
        if not by_name["desync"].get("desynced"):
            return "desync reported no desync"
        if by_name["resync"].get("desynced") is not False:
            return "resync left the node desynced"
        rows = a.root(f"SELECT COUNT(*) FROM {LEASE_DB}.desync_lease").strip()
        if rows != "0":
            return "the lease was not released"
        return None

    out = module_outcome(results, check)
    wait_disarmed(a)
    failures = watchdog_failures(a, mark)
    if out.ok and failures:
        return Outcome(False, "watchdog: " + failures[-1], out.warnings)
    return out


def op_watchdog(lab: Lab) -> Outcome:
    """The watchdog alone ends a desync whose controller died: its lease expires, it resyncs and records."""
    a = lab.a
    lease_schema(a, True)
    mark = watchdog_log_mark(a)
    results = ansible_tasks(a, [dict(name="desync", module="dbtools.galera.galera_desync",
                                     args=dict(DESYNC, state="desynced", lease_ttl=4))])
    out = module_outcome(results)
    if not out.ok:
        return out
    end = time.monotonic() + 40
    while time.monotonic() < end:
        desync = a.root("SELECT @@GLOBAL.wsrep_desync").strip()
        events = a.root(f"SELECT COUNT(*) FROM {LEASE_DB}.desync_events WHERE owner = 'probe'").strip()
        lease = a.root(f"SELECT COUNT(*) FROM {LEASE_DB}.desync_lease").strip()
        if desync == "0" and events != "0" and lease == "0":
            failures = watchdog_failures(a, mark)
            return Outcome(not failures, "watchdog: " + failures[-1] if failures else "", out.warnings)
        time.sleep(1)
    failures = watchdog_failures(a, mark)
    return Outcome(False, "watchdog: " + (failures[-1] if failures else
                                          f"did not resync (wsrep_desync={desync}, events={events}, lease={lease})"))


def op_takeover(lab: Lab) -> Outcome:
    """An expired lease names server B (desynced): A's desync resyncs B over TCP as the same account."""
    a, b = lab.a, lab.b
    lease_schema(a, True)
    b.root("SET GLOBAL wsrep_desync = ON")
    a.root(f"INSERT INTO {LEASE_DB}.desync_lease (lease_key, cluster_name, node, node_address, owner, acquired_at, "
           f"expires_at) VALUES ('desync', 'dbtools', {quote_string(b.node_name)}, '{b.ip}:3306', 'old-owner', "
           "UTC_TIMESTAMP(6) - INTERVAL 2 HOUR, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)")
    results = ansible_tasks(a, [
        dict(name="takeover", module="dbtools.galera.galera_desync", args=dict(DESYNC, state="desynced")),
        dict(name="resync", module="dbtools.galera.galera_desync", args=dict(DESYNC, state="synced")),
    ])

    def check(_by_name):
        if b.root("SELECT @@GLOBAL.wsrep_desync").strip() != "0":
            return "the old holder's node was not resynced"
        return None

    out = module_outcome(results, check)
    b.root("SET GLOBAL wsrep_desync = OFF")
    a.root(f"DELETE FROM {LEASE_DB}.desync_lease")
    wait_disarmed(a)
    return out


def op_info(lab: Lab) -> Outcome:
    a = lab.a
    lease_schema(a, True)
    a.root(f"INSERT INTO {LEASE_DB}.desync_lease (lease_key, node, owner, acquired_at, expires_at) VALUES "
           "('desync', 'elsewhere', 'someone', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 HOUR)")
    expected = int(a.root("SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
                          "WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'sys')"))
    results = ansible_tasks(a, [dict(name="galera_info", module="dbtools.galera.galera_info",
                                     args=dict(sample_seconds=0))])

    def check(by_name):
        info = by_name["galera_info"]
        members = info["cluster"]["members"]
        if any(m.get("name") is None for m in members):
            return ("galera_info: cluster.members has no names (no error: the module fell back to "
                    "wsrep_incoming_addresses; SELECT on mysql.wsrep_cluster_members missing)")
        if info["server"]["data_bytes"] != expected:
            return (f"galera_info: server.data_bytes is {info['server']['data_bytes']}, not {expected} (no error: "
                    "information_schema.TABLES hides tables the user has no privilege on)")
        if not info.get("lease"):
            return "galera_info: the lease row was not read"
        return None

    out = module_outcome(results, check)
    a.root(f"DELETE FROM {LEASE_DB}.desync_lease")
    return out


def op_wait(lab: Lab) -> Outcome:
    return module_outcome(ansible_tasks(lab.a, [dict(name="galera_wait_synced", module="dbtools.galera.galera_wait_synced",
                                                     args=dict(min_cluster_size=1, timeout=10))]))


def op_tables(lab: Lab) -> Outcome:
    """The role's table list (``_restore.list_tables``, what the verification compares) as the account,
    over TCP from the host (the account's network host part), compared with root's."""
    import pymysql  # pylint: disable=import-outside-toplevel
    try:
        conn = pymysql.connect(host=lab.a.ip, user=PROBE_USER, password=PROBE_PASSWORD, connect_timeout=10)
    except pymysql.err.MySQLError as exc:
        return Outcome(False, str(exc))
    try:
        mine = {(s, t) for s, t, _b in collection("_restore").list_tables(conn)}
    except pymysql.err.MySQLError as exc:
        return Outcome(False, str(exc))
    finally:
        conn.close()
    theirs = {tuple(line.split("\t")) for line in lab.a.root(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND "
        "TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')").splitlines()}
    missing = sorted(theirs - mine)
    if missing:
        return Outcome(False, f"the table list lacks {len(missing)} of {len(theirs)} tables, e.g. "
                              f"{'.'.join(missing[0])} (no error: information_schema.TABLES hides tables the user "
                              "has no privilege on)")
    return Outcome(True)


def op_login(lab: Lab) -> Outcome:
    argv = collection("_tools").client_argv(CNF, "SELECT @@wsrep_node_name, @@datadir, @@log_bin, @@GLOBAL.wsrep_desync")
    done = lab.a.exec(*argv)
    return Outcome(done.returncode == 0, done.stderr.strip())


def run_tool(server: Server, argv: list, out: str, log: str) -> subprocess.CompletedProcess:
    return server.exec("python3", "-c", RUN_TO_FILE, out, log, *argv)


def tool_errors(server: Server, log: str) -> tuple:
    text = server.exec("cat", log).stdout
    lines = [ln.strip() for ln in text.splitlines()]
    errors = [ln for ln in lines if re.search(r"\berror\b|denied|fatal|couldn't|failed", ln, re.I)
              and (not re.search(r"warning", ln, re.I) or "denied" in ln)]
    warnings = sorted({re.sub(r"^\[\d+\] [\d-]+ [\d:]+ ", "", ln) for ln in lines
                       if "missing required privilege" in ln and "Warning" in ln})
    return errors, warnings


def op_mariabackup(lab: Lab, incremental: bool = False) -> Outcome:
    """mariabackup --backup --galera-info (streamed) on the node desynced, as the role runs it."""
    a = lab.a
    tools = collection("_tools")
    lsn = None
    if incremental:
        base = tools.physical_argv("mariabackup", ROOT_CNF, True, f"{WORK}/base", f"{WORK}/base-lsn")
        done = run_tool(a, base, "/dev/null", f"{WORK}/base.log")
        if done.returncode != 0:
            raise RuntimeError(f"root's base backup failed: {a.exec('tail', '-5', f'{WORK}/base.log').stdout}")
        checkpoints = a.exec("sh", "-c", f"cat {WORK}/base-lsn/*checkpoints").stdout
        lsn = int(re.search(r"to_lsn\s*=\s*(\d+)", checkpoints).group(1))
    argv = tools.physical_argv("mariabackup", CNF, True, f"{WORK}/target", f"{WORK}/lsn", incremental_lsn=lsn)
    a.root("SET GLOBAL wsrep_desync = ON")
    try:
        done = run_tool(a, argv, f"{WORK}/stream.xb", f"{WORK}/tool.log")
    finally:
        a.root("SET GLOBAL wsrep_desync = OFF")
    errors, warnings = tool_errors(a, f"{WORK}/tool.log")
    if done.returncode != 0 or not a.exec("grep", "-q", "completed OK!", f"{WORK}/tool.log").returncode == 0:
        return Outcome(False, (errors[-1] if errors else f"exit {done.returncode}"), warnings)
    a.exec("mkdir", "-p", f"{WORK}/x")
    a.exec("sh", "-c", f"mbstream -x -C {WORK}/x < {WORK}/stream.xb")
    galera = a.exec("sh", "-c", f"cat {WORK}/x/*_galera_info 2>/dev/null").stdout.strip()
    if not re.match(r"^[0-9a-f-]{36}:\d+", galera):
        return Outcome(False, f"no Galera position in the backup (galera_info: {galera!r})", warnings)
    if a.log_bin:
        binlog = a.exec("sh", "-c", f"cat {WORK}/x/*_binlog_info 2>/dev/null").stdout.strip()
        if not binlog:
            return Outcome(False, "no binary log position in the backup (no *_binlog_info, no error)", warnings)
    return Outcome(True, "", warnings)


DUMP_OBJECTS = {
    "table t": r"CREATE TABLE `t`",
    "view v": r"VIEW `v`",
    "trigger trg": r"TRIGGER (`?grants_fixture`?\.)?`?trg`?",
    "procedure p": r"PROCEDURE `p`",
    "function f": r"FUNCTION `f`",
    "event e": r"EVENT `e`",
}


def missing_objects(text: str) -> list:
    return [what for what, pattern in DUMP_OBJECTS.items() if not re.search(pattern, text)]


def op_mysqldump(lab: Lab) -> Outcome:
    a = lab.a
    argv = collection("_tools").mysqldump_argv("mariadb-dump", CNF, a.log_bin)
    done = run_tool(a, argv, f"{WORK}/dump.sql", f"{WORK}/tool.log")
    errors, warnings = tool_errors(a, f"{WORK}/tool.log")
    if done.returncode != 0:
        return Outcome(False, errors[-1] if errors else f"exit {done.returncode}", warnings)
    text = a.exec("cat", f"{WORK}/dump.sql").stdout
    missing = missing_objects(text)
    if missing:
        return Outcome(False, f"the dump lacks {', '.join(missing)} (mariadb-dump exit 0, no error)", warnings)
    if a.log_bin and ("-- CHANGE MASTER TO" not in text or "gtid_slave_pos" not in text):
        return Outcome(False, "the dump lacks the binary log position / GTID (no error)", warnings)
    return Outcome(True, "", warnings)


def op_mydumper(lab: Lab) -> Outcome:
    a = lab.a
    argv = collection("_tools").mydumper_argv("mydumper", CNF, f"{WORK}/md", 2, False, f"{WORK}/md.log")
    done = run_tool(a, argv, "/dev/null", f"{WORK}/tool.log")
    errors, warnings = tool_errors(a, f"{WORK}/tool.log")
    md_errors, _w = tool_errors(a, f"{WORK}/md.log")
    if done.returncode != 0:
        found = md_errors + errors
        return Outcome(False, found[-1] if found else f"exit {done.returncode}", warnings)
    text = a.exec("sh", "-c", f"cat {WORK}/md/grants_fixture* 2>/dev/null").stdout
    missing = missing_objects(text)
    if missing:
        return Outcome(False, f"the dump lacks {', '.join(missing)} (mydumper exit 0" +
                       (f"; log: {md_errors[-1]}" if md_errors else ", no error") + ")", warnings)
    if a.log_bin:
        meta = a.exec("cat", f"{WORK}/md/metadata").stdout
        if "Log:" not in meta:
            return Outcome(False, "mydumper's metadata lacks the binary log position" +
                           (f" (log: {md_errors[-1]})" if md_errors else " (no error)"), warnings)
    return Outcome(True, "", warnings)


LEASE_CANDIDATES = [f"{p} ON {LEASE_DB}.*" for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE")]


@dataclass
class Operation:
    name: str
    what: str
    run: object
    candidates: list
    log_bin: tuple = (False,)
    needs_mydumper: bool = False


def glob(names) -> list:
    """Grants of these privileges on *.*."""
    return [f"{n} ON *.*" for n in names]


def operations() -> list:
    tool_candidates = glob(["RELOAD", "PROCESS", "BINLOG MONITOR", "LOCK TABLES", "SELECT", "SHOW VIEW", "TRIGGER",
                            "EVENT", "SHOW CREATE ROUTINE", "SLAVE MONITOR", "SUPER", "CONNECTION ADMIN", "EXECUTE",
                            "SHOW DATABASES", "REPLICATION SLAVE ADMIN"])
    lease = LEASE_CANDIDATES
    return [
        Operation("login", "the role's login check (SELECT @@wsrep_node_name, @@datadir, @@log_bin) and "
                  "@@GLOBAL.wsrep_desync", op_login, []),
        Operation("wait_synced", "galera_wait_synced", op_wait, []),
        Operation("galera_info", "galera_info: status, variables, members, data size, lease read", op_info,
                  glob(["SELECT", "PROCESS", "SHOW DATABASES"]) + lease),
        Operation("table_list", "the table list the verification compares (information_schema.TABLES)",
                  op_tables, glob(["SELECT", "SHOW DATABASES", "SHOW VIEW"])),
        Operation("desync", "galera_desync desynced + synced, lease schema present, watchdog armed",
                  lambda lab: op_desync(lab, True), glob(["SUPER"]) + lease),
        Operation("desync_new_schema", "galera_desync desynced + synced, lease schema created on first use",
                  lambda lab: op_desync(lab, False), glob(["SUPER"]) + lease),
        Operation("watchdog", "the watchdog resyncs at the lease deadline and records desync_events",
                  op_watchdog, glob(["SUPER"]) + lease),
        Operation("takeover", "expired-lease takeover: resync the old holder's node over TCP",
                  op_takeover, glob(["SUPER"]) + lease),
        Operation("mariabackup", "mariabackup --backup --galera-info --stream=xbstream (node desynced)",
                  op_mariabackup, tool_candidates, log_bin=(False, True)),
        Operation("mariabackup_incremental", "mariabackup --backup --galera-info --incremental-lsn",
                  lambda lab: op_mariabackup(lab, True), tool_candidates, log_bin=(False, True)),
        Operation("mariadb_dump", "mariadb-dump --single-transaction --all-databases --routines --events --triggers "
                  "(+ --master-data=2 --gtid with log_bin)", op_mysqldump, tool_candidates, log_bin=(False, True)),
        Operation("mydumper", "mydumper --trx-consistency-only --triggers --events --routines", op_mydumper,
                  tool_candidates, log_bin=(False, True), needs_mydumper=True),
    ]


# --------------------------------------------------------------------------------------------------
# The search

_NAMED = [
    re.compile(r"you need \(at least one of\) the (?P<list>[A-Z_ ,]+?) privilege", re.I),
    re.compile(r"missing required privilege (?P<list>[A-Z_ ]+?) on", re.I),
    re.compile(r"(?P<list>[A-Z_ ]+?) command denied to user", re.I),
]


def suggest(error: str, remaining: list) -> str | None:
    """The candidate grant an error names (None when it names none of them)."""
    names = []
    for pattern in _NAMED:
        for match in pattern.finditer(error or ""):
            names.extend(n.strip().upper() for n in match.group("list").split(","))
    if "LOCK TABLES" in (error or "").upper():
        names.append("LOCK TABLES")
    if re.search(r"show events|events from|\bEVENT\b", error or "", re.I):
        names.append("EVENT")
    if re.search(r"SHOW CREATE VIEW|view v", error or "", re.I):
        names.append("SHOW VIEW")
    if re.search(r"trigger", error or "", re.I):
        names.append("TRIGGER")
    # An error that accepts several names the coarse SUPER among them: take the finer one first.
    names.sort(key=lambda n: n == "SUPER")
    database = re.search(r"to database '([^']+)'|for table `([^`]+)`", error or "")
    wanted_db = next((g for g in database.groups() if g), None) if database else None
    for name in names:
        for candidate in remaining:
            privilege, _sep, scope = candidate.partition(" ON ")
            if privilege.upper() != name:
                continue
            if wanted_db == LEASE_DB and scope != f"{LEASE_DB}.*" and any(
                    c.startswith(f"{name} ON {LEASE_DB}") for c in remaining):
                continue
            return candidate
    return None


def attempt(lab: Lab, op: Operation, grants: list) -> Outcome:
    lab.a.grant(grants)
    lab.b.grant(grants)
    lab.a.reset()
    lab.b.reset()
    try:
        return op.run(lab)
    except Exception as exc:  # pylint: disable=broad-except  # a probe that crashed is a failed probe
        return Outcome(False, f"probe crashed: {type(exc).__name__}: {exc}")


def measure_op(lab: Lab, op: Operation, log) -> dict:
    """Grow from USAGE, then remove each privilege; the record of both."""
    candidates = [c for c in op.candidates if c.split(" ON ")[0] in lab.privileges]
    granted, trace = [], []
    while True:
        out = attempt(lab, op, granted)
        trace.append(dict(grants=list(granted), ok=out.ok, error=out.error, warnings=out.warnings))
        log(f"    {op.name}: {granted or ['USAGE']} -> {'OK' if out.ok else out.error[:300]}")
        if out.ok:
            break
        remaining = [c for c in candidates if c not in granted]
        if not remaining:
            return dict(op=op.name, what=op.what, works=False, trace=trace, needed=[])
        granted.append(suggest(out.error, remaining) or remaining[0])
    needed, ablation = [], []
    for grant in list(granted):
        without = [g for g in granted if g != grant]
        out = attempt(lab, op, without)
        ablation.append(dict(without=grant, ok=out.ok, error=out.error, warnings=out.warnings))
        log(f"    {op.name}: without {grant} -> {'OK (not needed)' if out.ok else out.error[:300]}")
        if not out.ok:
            needed.append(grant)
    if needed != granted:  # something was not needed after all: the smaller set must work on its own
        out = attempt(lab, op, needed)
        trace.append(dict(grants=list(needed), ok=out.ok, error=out.error, warnings=out.warnings))
        if not out.ok:
            needed = granted
    return dict(op=op.name, what=op.what, works=True, needed=needed, trace=trace, ablation=ablation)


def account_list(version: tuple) -> list:
    out = []
    for privileges, on, _why in account_grants(version):
        out.extend(f"{p.strip()} ON {on.replace('`', '')}" for p in privileges.split(","))
    return out


# Which operation showed each privilege needed (measured): where check_account looks first when the
# per-operation search did not run (--account-only).
EXPECTED_NEEDS = {
    "desync": [f"{p} ON *.*" for p in ("SUPER",)] + [f"{p} ON {LEASE_DB}.*" for p in ("SELECT", "INSERT", "UPDATE",
                                                                                      "DELETE")],
    "desync_new_schema": [f"CREATE ON {LEASE_DB}.*"],
    "mariabackup": [f"{p} ON *.*" for p in ("RELOAD", "PROCESS", "BINLOG MONITOR")],
    "mariadb_dump": [f"{p} ON *.*" for p in ("SELECT", "SHOW VIEW", "TRIGGER", "EVENT")],
}


def check_account(lab: Lab, ops: list, log, needs: dict) -> dict:
    """Every operation with the documented account; then without each of its privileges, until one
    operation fails (those that needed it on their own first: ``needs`` {op name: [grants]})."""
    grants = account_list(lab.version)
    result = dict(grants=grants, all=[], without=[])
    for op in ops:
        out = attempt(lab, op, grants)
        result["all"].append(dict(op=op.name, log_bin=lab.a.log_bin, ok=out.ok, error=out.error,
                                  warnings=out.warnings))
        log(f"    account: {op.name} -> {'OK' if out.ok else out.error[:300]}")
    for grant in grants:
        failure = None
        for op in sorted(ops, key=lambda o, g=grant: g not in needs.get(o.name, ())):
            if not op.candidates:
                continue
            out = attempt(lab, op, [g for g in grants if g != grant])
            if not out.ok:
                failure = dict(op=op.name, error=out.error)
                break
        result["without"].append(dict(without=grant, log_bin=lab.a.log_bin, failure=failure))
        outcome = f"{failure['op']}: {failure['error'][:300]}" if failure else "NOTHING FAILS (covered by another grant)"
        log(f"    account without {grant}: {outcome}")
    return result


def measure(image: str, log, only=None, account_only: bool = False) -> dict:
    lab = Lab(image)
    log(f"{image}: starting {lab.a.name}, {lab.b.name}")
    lab.up()
    report = dict(image=image, version=".".join(map(str, lab.version)),
                  server=lab.a.root("SELECT VERSION()").strip(), ops=[], account=[])
    try:
        all_ops = [op for op in operations() if not op.needs_mydumper or lab.mydumper]
        if only:
            all_ops = [op for op in all_ops if op.name in only]
        for log_bin in (False, True):
            if log_bin:
                lab.a.start(log_bin=True)
            ops = [op for op in all_ops if log_bin in op.log_bin]
            if not ops:
                continue
            log(f"  log_bin={'ON' if log_bin else 'OFF'}: {len(ops)} operations")
            union, needs = [], {}
            for op in ops if not account_only else ():
                record = measure_op(lab, op, log)
                record["log_bin"] = log_bin
                report["ops"].append(record)
                needs[op.name] = record["needed"]
                union.extend(g for g in record["needed"] if g not in union)
            if union:
                log(f"  union of what the operations need: {union}")
            account = check_account(lab, ops, log, needs or EXPECTED_NEEDS)
            account.update(log_bin=log_bin, union=union)
            report["account"].append(account)
        report["host_part"] = measure_host_part(lab, log)
    finally:
        lab.down()
    return report


def measure_host_part(lab: Lab, log) -> list:
    """The takeover connects to the other node over TCP: which host parts of the account let it in."""
    grants = account_list(lab.version)
    out = []
    for hosts in (("localhost",), ("localhost", lab.a.ip), ("localhost", "10.89.0.%"),
                  ("localhost", "10.89.0.0/255.255.255.0")):
        lab.a.grant(grants)
        lab.b.grant(grants, hosts=hosts)
        lab.a.reset()
        lab.b.reset()
        try:
            result = op_takeover(lab)
        except Exception as exc:  # pylint: disable=broad-except
            result = Outcome(False, f"probe crashed: {exc}")
        out.append(dict(hosts_on_other_node=list(hosts), ok=result.ok, error=result.error))
        log(f"    takeover with the other node's account at {list(hosts)} -> {'OK' if result.ok else result.error[:300]}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure on throwaway containers")
    m.add_argument("--image", action="append", help="node image (default: dbtools-galera-node:bookworm)")
    m.add_argument("--json", help="write the full record here")
    m.add_argument("--only", action="append", help="only these operations")
    m.add_argument("--account-only", action="store_true", help="only check the documented account")
    s = sub.add_parser("sql", help="print the account's statements for a server version")
    s.add_argument("--version", required=True, help="server version, e.g. 10.11 or 11.8.3-MariaDB")
    s.add_argument("--user", default="dbtools")
    s.add_argument("--host", action="append", help="host part (repeatable; default: localhost and 10.0.0.%%)")
    s.add_argument("--password-env", help="name of an environment variable holding the password "
                   "(default: a placeholder to replace)")
    args = parser.parse_args(argv)
    if args.command == "sql":
        hosts = tuple(args.host or ("localhost", "10.0.0.%"))
        password = os.environ[args.password_env] if args.password_env else None
        print("\n".join(account_sql(parse_version(args.version), args.user, hosts, password)))
        return 0

    def log(text: str) -> None:
        print(text, flush=True)

    reports = [measure(image, log, args.only, args.account_only) for image in (args.image or ["dbtools-galera-node:bookworm"])]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(reports, handle, indent=1)
    docker("network", "rm", NETWORK, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
