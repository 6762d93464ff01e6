"""The desynced node out of the load balancers (docs/lb.md), with two real HAProxy 2.6 instances.

galera-haproxy1 has a TCP runtime API (the controller and the nodes reach it), galera-haproxy2 only a Unix
socket inside its container (reached by delegating to that host). A client connects through galera-haproxy1
every 50 ms and asks which node answered; a sampler reads galera-node3's wsrep state and galera-haproxy1's
view of it every 50 ms. Every figure is read from outside: HAProxy's own runtime API, the node's own status.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pymysql
import pytest

from conftest import admin_connection, kill_controller, kill_tree, playbook_command, playbook_env

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import haproxy  # noqa: E402  pylint: disable=wrong-import-position

testinfra_hosts = ["galera"]
NODE = "galera-node3"
BACKUP_DIR = "/var/backups/galera-lb"
ADMIN = dict(user="dbtools_admin", password="dbtools-test-admin")
DRAIN = 0x08


@pytest.fixture(scope="module")
def lb():
    """Both instances, started afresh for this module and removed after it."""
    state = haproxy.up()
    yield state
    haproxy.down()
    subprocess.run(["docker", "exec", NODE, "sh", "-c", f"rm -rf {BACKUP_DIR} /var/backups/tiny/*"], check=False)


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    """galera-haproxy2 as an inventory host, so the role can delegate its step there."""
    path = tmp_path_factory.mktemp("lb") / "haproxy.ini"
    path.write_text("[haproxy]\ngalera-haproxy2 ansible_connection=community.docker.docker "
                    "ansible_python_interpreter=/usr/bin/python3\n", encoding="utf-8")
    return str(path)


def items(lb) -> list:
    return [dict(name="haproxy1", address=lb["haproxy1"]["api"], backend="galera", server=NODE),
            dict(name="haproxy2", socket=lb["haproxy2"]["socket"], host="galera-haproxy2", backend="galera",
                 server=NODE)]


def api_admin_state(address: str, server: str = NODE) -> int:
    """srv_admin_state of a server through a TCP runtime API (read here, independently of the collection)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        conn.sendall(b"show servers state galera\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    for line in data.decode().splitlines()[2:]:
        fields = line.split()
        if len(fields) > 6 and fields[3] == server:
            return int(fields[6])
    raise AssertionError(f"no server {server} in {data!r}")


def socket_admin_state(container: str, server: str = NODE) -> int:
    return haproxy.show_servers(container)[server][1]


def one(conn, query):
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()


def backup_command(request, inventory, lb, events, *extra):
    settings = dict(galera_backup_node=NODE, galera_backup_dir=BACKUP_DIR, galera_backup_sample_seconds=0.5,
                    galera_backup_haproxy=items(lb),
                    galera_backup_pre_desync_tasks=os.path.join(HERE, "..", "hooks", "pre_desync.yml"),
                    galera_backup_post_resync_tasks=os.path.join(HERE, "..", "hooks", "post_resync.yml"),
                    galera_test_lb_events=str(events))
    return playbook_command(request, "dbtools.galera.backup", "-i", inventory, "-e", json.dumps(settings), *extra)


def hook_times(events, kind: str) -> list:
    if not events.exists():
        return []
    return [float(line.split()[2]) for line in events.read_text().splitlines() if line.startswith(kind + " ")]


class Client(threading.Thread):
    """A new connection through galera-haproxy1 every 50 ms: (connect start, answer end, node or error)."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.host, self.port = address.rsplit(":", 1)
        self.answers = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            start = time.time()
            try:
                conn = pymysql.connect(host=self.host, port=int(self.port), connect_timeout=3, read_timeout=3,
                                       **ADMIN)
                try:
                    node = one(conn, "SELECT @@wsrep_node_name")[0]
                finally:
                    conn.close()
            except Exception as exc:  # pylint: disable=broad-except
                node = f"error: {exc}"
            self.answers.append((start, time.time(), node))
            self.stop.wait(0.05)


class Sampler(threading.Thread):
    """Every 50 ms: galera-node3's wsrep_desync and state, then galera-haproxy1's admin state of it."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address = address
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        conn = admin_connection(NODE)
        try:
            while not self.stop.is_set():
                desync = int(one(conn, "SELECT @@wsrep_desync")[0])
                state = one(conn, "SHOW STATUS LIKE 'wsrep_local_state_comment'")[1]
                read_at = time.time()
                admin = api_admin_state(self.address)
                self.samples.append((read_at, desync, state, admin, time.time()))
                self.stop.wait(0.05)
        finally:
            conn.close()


def galera_lb(request, inventory, host, args, *extra):
    """dbtools.galera.galera_lb ad hoc on ``host`` (localhost: the controller); (rc, output)."""
    run = subprocess.run(["ansible", "-i", request.config.option.ansible_inventory, "-i", inventory, host,
                          "-m", "dbtools.galera.galera_lb", "-a", json.dumps(args), *extra],
                         capture_output=True, text=True, env=playbook_env(), check=False, timeout=120)
    return run.returncode, " ".join((run.stdout + run.stderr).split())


def test_galera_lb_against_real_haproxy_check_change_unchanged_and_hostile_names(request, lb, inventory):
    """The module's rhythm on a real HAProxy 2.6: check mode changes nothing, drain, drain again unchanged,
    ready; a hostile server name is refused before anything is sent; both a TCP and a socket instance."""
    def adhoc(host, args, *extra):
        return galera_lb(request, inventory, host, args, *extra)

    tcp, sock = items(lb)
    sock.pop("host")
    for host, item, read in (("localhost", tcp, lambda: api_admin_state(lb["haproxy1"]["api"])),
                             ("galera-haproxy2", sock, lambda: socket_admin_state("galera-haproxy2"))):
        rc, out = adhoc(host, dict(state="drain", haproxy=[item]), "--check")
        assert rc == 0 and '"changed": true' in out, out
        assert read() == 0, "check mode changed HAProxy"
        rc, out = adhoc(host, dict(state="drain", haproxy=[item]))
        assert rc == 0 and '"changed": true' in out, out
        assert read() & DRAIN
        rc, out = adhoc(host, dict(state="drain", haproxy=[item]))
        assert rc == 0 and '"changed": false' in out and "already out of rotation (drain" in out, out
        rc, out = adhoc(host, dict(state="ready", haproxy=[item]))
        assert rc == 0 and '"changed": true' in out, out
        assert read() == 0
    hostile = dict(tcp, server="galera-node3;disable server galera/galera-node1")
    rc, out = adhoc("localhost", dict(state="drain", haproxy=[hostile]))
    assert rc != 0 and "is not a plain HAProxy name" in out and "Nothing was changed" in out, out
    rc, out = adhoc("localhost", dict(state="drain", haproxy=[dict(tcp, server="galera-node9")]))
    known = "backend galera has no server 'galera-node9' (it has: galera-node1, galera-node2, galera-node3)"
    assert rc != 0 and known in out, out
    assert {s: admin for s, (_op, admin) in haproxy.show_servers("galera-haproxy1").items()} == \
        {"galera-node1": 0, "galera-node2": 0, "galera-node3": 0}


def test_no_query_reaches_the_node_while_it_is_out_and_it_takes_traffic_after_synced(
        request, lb, inventory, tmp_path):
    events = tmp_path / "events"
    client, sampler = Client(lb["haproxy1"]["frontend"]), Sampler(lb["haproxy1"]["api"])
    client.start()
    sampler.start()
    try:
        time.sleep(2)  # the client reaches every node before the backup
        run = subprocess.run(backup_command(request, inventory, lb, events), capture_output=True, text=True,
                             env=playbook_env(), check=False, timeout=600)
        time.sleep(3)  # and again after it
    finally:
        client.stop.set()
        sampler.stop.set()
        client.join(10)
        sampler.join(10)
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 0, output[-3000:]

    drained = [s for s in sampler.samples if s[3] & DRAIN]
    out_of_sync = [s for s in sampler.samples if s[1] or s[2] != "Synced"]
    assert drained and out_of_sync, "the sampler never saw the drain or the desync"
    # Every read that saw the node desynced or not Synced yet was followed at once by a read of HAProxy that
    # saw it drained: the drain came before the desync and the put-back after Synced.
    assert all(s[3] & DRAIN for s in out_of_sync), [s for s in out_of_sync if not s[3] & DRAIN][:3]
    first_out, last_out = drained[0][4], drained[-1][0]
    assert [s for s in sampler.samples if first_out <= s[0] <= last_out and not s[3] & DRAIN] == []

    # No connection made while HAProxy was seen drained reached galera-node3.
    during = [a for a in client.answers if a[0] >= first_out and a[1] <= last_out]
    before = [a for a in client.answers if a[1] < drained[0][0]]
    after = [a for a in client.answers if a[0] > drained[-1][4]]
    errors = [a for a in client.answers if a[2].startswith("error")]
    print(f"\n{len(client.answers)} queries through galera-haproxy1: {len(before)} before the drain, {len(during)} "
          f"while drained ({last_out - first_out:.1f} s; galera-node3 desynced for "
          f"{out_of_sync[-1][0] - out_of_sync[0][0]:.1f} s of it), {len(after)} after; errors: {len(errors)}")
    assert errors == [], errors[:3]
    assert len(during) >= 20, "too few queries while the node was out for the test to mean anything"
    assert [a for a in during if a[2] == NODE] == [], "a query reached galera-node3 while it was out of rotation"
    assert {a[2] for a in during} == {"galera-node1", "galera-node2"}
    assert NODE in {a[2] for a in before}, "the client never reached galera-node3 before: the test cannot fail"
    assert NODE in {a[2] for a in after}, "galera-node3 takes no traffic again after Synced"

    # The hooks ran around the desync: the pre-desync tasks before it, the post-resync tasks after Synced.
    pre, post = hook_times(events, "pre_desync"), hook_times(events, "post_resync")
    assert len(pre) == 1 and len(post) == 1, events.read_text() if events.exists() else "no hook ran"
    assert drained[0][0] <= pre[0] + 0.5 and pre[0] < out_of_sync[0][0]
    assert post[0] > out_of_sync[-1][0]
    assert socket_admin_state("galera-haproxy2") == 0 and api_admin_state(lb["haproxy1"]["api"]) == 0


def test_a_failed_backup_puts_the_node_back_in_every_instance(request, lb, inventory, tmp_path):
    """The backup fills its tiny filesystem after the desync: the node is resynced and put back all the same."""
    events = tmp_path / "events"
    run = subprocess.run(backup_command(request, inventory, lb, events, "-e", "galera_backup_dir=/var/backups/tiny",
                                        "-e", "galera_backup_free_space_factor=0"),
                         capture_output=True, text=True, env=playbook_env(), check=False, timeout=600)
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0
    assert f"The backup of {NODE} failed at \"Wait for the backup run" in output, output[-3000:]
    assert hook_times(events, "pre_desync") and hook_times(events, "post_resync")
    assert api_admin_state(lb["haproxy1"]["api"]) == 0
    assert socket_admin_state("galera-haproxy2") == 0
    conn = admin_connection(NODE)
    try:
        assert one(conn, "SELECT @@wsrep_desync")[0] == 0
    finally:
        conn.close()


def tool_running() -> bool:
    return subprocess.run(["docker", "exec", NODE, "pgrep", "-x", "mariabackup"], capture_output=True,
                          check=False).returncode == 0


def test_a_killed_controller_the_watchdog_puts_the_node_back_where_it_can(request, lb, inventory, tmp_path):
    """The watchdog resyncs and puts the node back in galera-haproxy1 (TCP runtime API, reached from the node);
    galera-haproxy2's Unix socket on another host is out of its reach: it stays drained, as documented and as
    galera_desync warned, until it is put back by hand."""
    cmd = backup_command(request, inventory, lb, tmp_path / "events", "-e", "galera_backup_lease_ttl=15",
                         "-e", json.dumps({"galera_backup_extra_args": ["--throttle=4"]}))
    # Its own process group: a killed controller is ansible-playbook AND its forked workers.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=playbook_env(),
                            start_new_session=True)
    conn = admin_connection(NODE)
    try:
        deadline = time.monotonic() + 180
        while not (int(one(conn, "SELECT @@wsrep_desync")[0]) == 1 and tool_running()):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "galera-node3 was never desynced with mariabackup running"
            time.sleep(0.2)
        assert api_admin_state(lb["haproxy1"]["api"]) & DRAIN and socket_admin_state("galera-haproxy2") & DRAIN
        kill_controller(proc)
        killed = time.monotonic()
        output = " ".join(proc.communicate(timeout=60)[0].split())
        assert "the watchdog cannot put the node back in HAProxy haproxy2" in output, output[-3000:]

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            synced = (int(one(conn, "SELECT @@wsrep_desync")[0]) == 0
                      and one(conn, "SHOW STATUS LIKE 'wsrep_local_state_comment'")[1] == "Synced"
                      and one(conn, "SELECT COUNT(*) FROM dbtools_galera.desync_lease")[0] == 0)
            if synced and api_admin_state(lb["haproxy1"]["api"]) == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("galera-node3 was not resynced and back in galera-haproxy1 within 300 s")
        print(f"\ncontroller killed; galera-node3 Synced and back in galera-haproxy1 {time.monotonic() - killed:.1f} s "
              "later (the watchdog)")
        assert socket_admin_state("galera-haproxy2") & DRAIN, "the documented limitation no longer holds: update docs"
        log = subprocess.run(["docker", "exec", NODE, "cat", "/var/log/dbtools-galera/watchdog.log"],
                             capture_output=True, text=True, check=True).stdout
        assert "back in rotation: haproxy1 galera/galera-node3 drain -> ready" in log
        assert "cannot put the node back in HAProxy haproxy2" in log
        events = one(conn, "SELECT GROUP_CONCAT(event ORDER BY id) FROM dbtools_galera.desync_events WHERE node = "
                           "'galera-node3' AND at > UTC_TIMESTAMP() - INTERVAL 10 MINUTE")[0]
        assert "watchdog_resync" in events and "watchdog_lb_ready" in events and "watchdog_lb_failed" in events
    finally:
        conn.close()
        if proc.poll() is None:
            kill_tree(proc.pid)
    # Put it back in galera-haproxy2 by hand, as docs/lb.md tells.
    sock = items(lb)[1]
    sock.pop("host")
    rc, out = galera_lb(request, inventory, "galera-haproxy2", dict(state="ready", haproxy=[sock]))
    assert rc == 0 and '"changed": true' in out, out
    assert socket_admin_state("galera-haproxy2") == 0
    # The dead run's partial backup waits for the next run to sweep it; this scenario removes its directory.
    wait_for_runner = time.monotonic() + 120
    while tool_running() and time.monotonic() < wait_for_runner:
        time.sleep(1)
