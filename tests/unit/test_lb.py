# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node out of the load balancers and back (_lb, galera_lb, the watchdog's and galera_desync's LB steps).

A fake HAProxy speaks the runtime API's non-interactive mode over a real Unix socket or TCP port, with
the answers HAProxy 2.6.12 gives (captured from it): one command per connection, an empty line for a
command that worked, "No such server." and the like for one that did not, "Permission denied" below
level admin, and the `show servers state` dump of format 1.
"""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest
from fake_galera import install  # pylint: disable=import-error

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _desync, _lb, _watchdog
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

HEADER = ("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
          "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
          "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
          "srv_check_addr srv_agent_addr srv_agent_port")
# What HAProxy 2.6.12 answered for a backend with a "disabled" server (admin state 5), before and after
# `set server galera/node3 state ready` (5 -> 4: CMAINT stays as the configuration's record).
REAL_DUMP = ("1\n" + HEADER + "\n"
             "2 galera 1 galera-node1 127.0.0.1 2 0 1 1 4 8 2 0 6 0 0 0 - 13306 - 0 0 - - 0\n"
             "2 galera 2 galera-node2 127.0.0.1 0 8 1 1 3 8 2 0 6 0 0 0 - 13307 - 0 0 - - 0\n"
             "2 galera 3 node3 127.0.0.1 0 5 1 1 4 1 0 0 8 0 0 0 - 13308 - 0 0 - - 0\n\n")


class FakeHAProxy:
    """A runtime API on a Unix socket (``sock``) and a TCP port (``address``), one command per connection."""

    def __init__(self, tmp_path, servers=("galera-node1", "galera-node2", "galera-node3"), level="admin"):
        self.backends = {"galera": {name: dict(admin=0, op=2) for name in servers}}
        self.level = level
        self.received = []
        self.mode = "answer"          # answer | silent (never answers) | drop (closes at once) | stuck (ignores sets)
        self.sock = str(tmp_path / "admin.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.sock)
        self.unix.listen(16)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.address = f"127.0.0.1:{self.tcp.getsockname()[1]}"
        self.stopping = False
        self.threads = [threading.Thread(target=self.serve, args=(s,), daemon=True) for s in (self.unix, self.tcp)]
        for thread in self.threads:
            thread.start()

    def item(self, server="galera-node3", **kw):
        return dict(dict(address=self.address, backend="galera", server=server), **kw)

    def admin(self, server="galera-node3", backend="galera") -> int:
        return self.backends[backend][server]["admin"]

    def serve(self, listener):
        while not self.stopping:
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                line = data.decode().rstrip("\n")
                self.received.append(line)
                if self.mode == "drop":
                    continue
                if self.mode == "silent":
                    threading.Event().wait(1.0)
                    continue
                conn.sendall(self.answer(line).encode())

    def answer(self, line: str) -> str:
        words = line.split(" ")
        if words[:3] == ["show", "servers", "state"] and len(words) == 4:
            servers = self.backends.get(words[3])
            if servers is None:
                return "Can't find backend.\n\n"
            rows = [f"2 {words[3]} {i} {name} 10.0.0.{i} {s['op']} {s['admin']} 1 1 5 8 2 0 6 0 0 0 - 3306 - 0 0 - - 0"
                    for i, (name, s) in enumerate(servers.items(), 1)]
            return "1\n" + HEADER + "\n" + "".join(r + "\n" for r in rows) + "\n"
        if words[:2] == ["set", "server"] and len(words) == 5 and words[3] == "state":
            if self.level != "admin":
                return "Permission denied\n\n"
            backend, _sep, server = words[2].partition("/")
            if backend not in self.backends:
                return "No such backend.\n\n"
            if server not in self.backends[backend]:
                return "No such server.\n\n"
            if self.mode == "stuck":
                return "\n"
            srv = self.backends[backend][server]
            if words[4] == "drain":
                srv["admin"] = (srv["admin"] | _lb.FDRAIN) & ~_lb.FMAINT
            elif words[4] == "ready":
                srv["admin"] &= ~(_lb.FDRAIN | _lb.FMAINT)
            elif words[4] == "maint":
                srv["admin"] = (srv["admin"] | _lb.FMAINT) & ~_lb.FDRAIN
            else:
                return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
            return "\n"
        if words[:3] == ["shutdown", "sessions", "server"] and len(words) == 4:
            return "\n" if self.level == "admin" else "Permission denied\n\n"
        return "Unknown command, but maybe one of the following ones is a better match:\n  help\n\n"

    def close(self):
        self.stopping = True
        for listener in (self.unix, self.tcp):
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()


@pytest.fixture
def lb(tmp_path):
    fake = FakeHAProxy(tmp_path)
    yield fake
    fake.close()


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def apply(items, state, check_mode=False, timeout=2.0):
    return _lb.apply(_lb.instances(items, "haproxy"), state, check_mode, timeout)


# -- input: nothing unchecked reaches the API's command line ------------------------------------------

HOSTILE = ["$(id)", "`id`", "a b", "a;show info", "galera;set server galera/galera-node1 state maint", "a/b",
           "#1", "a\nb", "a\\b", "'q'", '"q"', "", " ", "x" * 101, "ä", "a\tb", "a\r", None, 3, ["galera"]]


@pytest.mark.parametrize("field", ["backend", "server"])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_backend_and_server_names_are_refused_before_anything_is_sent(lb, field, value):
    item = lb.item(**{field: value})
    with pytest.raises(GaleraError) as err:
        apply([item], _lb.DRAIN)
    assert f"haproxy[0].{field}=" in err.value.msg and "Nothing was changed" in err.value.msg
    assert lb.received == []
    assert lb.admin() == 0


@pytest.mark.parametrize("name", ["galera", "galera-node3", "be_mysql.3306", "pxc:rw", "A-1_b.c:d"])
def test_plain_names_pass(name):
    assert _lb.check_name(name, "x") == name


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.5:9999", ("10.0.0.5", 9999)),
    ("lb-1.example.com:9999", ("lb-1.example.com", 9999)),
    ("[::1]:9999", ("::1", 9999)),
    ("[2001:db8::5]:1", ("2001:db8::5", 1)),
])
def test_parse_address(text, expected):
    assert _lb.parse_address(text, "a") == expected


@pytest.mark.parametrize("text", ["10.0.0.5", ":9999", "host:0", "host:65536", "host:port", "[::1]9999", "::1:9999",
                                  "[lb]:9999", "a b:1", "h;x:1", "$(id):1", "-h:1", "h:1\n", "", None, "ipv4@h:1"])
def test_parse_address_refuses(text):
    with pytest.raises(GaleraError, match="is not a host:port address.*Nothing was changed"):
        _lb.parse_address(text, "a")


@pytest.mark.parametrize("item, fragment", [
    (dict(backend="galera", server="n3"), "needs exactly one of socket"),
    (dict(socket="/run/haproxy.sock", address="h:1", backend="galera", server="n3"), "needs exactly one of socket"),
    (dict(socket="run/haproxy.sock", backend="galera", server="n3"), "is not an absolute path"),
    (dict(socket="/run/a\nb.sock", backend="galera", server="n3"), "is not an absolute path"),
    (dict(socket="/" + "s" * 107, backend="galera", server="n3"), "at most 107 bytes"),
    (dict(address="h:1", backend="galera", server="n3", name="a\nb"), "printable label"),
    ("h:1", "must be a dict"),
])
def test_wrong_items_are_refused(item, fragment):
    with pytest.raises(GaleraError, match=fragment):
        _lb.instances([item], "haproxy")


def test_the_same_server_twice_is_refused(lb):
    with pytest.raises(GaleraError, match="twice"):
        _lb.instances([lb.item(name="a"), lb.item(name="b")], "haproxy")


@pytest.mark.parametrize("builder, args", [(_lb.set_command, ("drain",)), (_lb.shutdown_command, ()),
                                           (_lb.show_command, ())])
def test_commands_recheck_the_names(builder, args):
    evil = _lb.Instance("x", "galera;show info", "n3", address=("h", 1))
    with pytest.raises(GaleraError):
        builder(evil, *args)


# -- parsing HAProxy's answers ----------------------------------------------------------------------

def test_parse_the_real_dump_of_haproxy_2_6():
    servers = _lb.parse_servers_state(REAL_DUMP, "galera")
    assert servers["galera-node1"] == dict(state="ready", admin_state=0, operational="UP")
    assert servers["galera-node2"] == dict(state="drain", admin_state=8, operational="DOWN")
    assert servers["node3"]["state"] == "maint"                  # "disabled": CMAINT | FMAINT
    assert _lb.admin_view(4)["state"] == "ready"                # after ready: CMAINT alone


def test_parse_keeps_only_the_backend_asked_for():
    other = REAL_DUMP.replace("2 galera 3 node3", "3 other 1 node3")
    assert sorted(_lb.parse_servers_state(other, "galera")) == ["galera-node1", "galera-node2"]


@pytest.mark.parametrize("answer", ["Can't find backend.\n\n", "Permission denied\n\n", "", "1\n", "garbage\n#x\n"])
def test_parse_refuses_what_is_not_a_dump(answer):
    with pytest.raises(GaleraError):
        _lb.parse_servers_state(answer, "galera")


@pytest.mark.parametrize("admin, state", [(0, "ready"), (_lb.FDRAIN, "drain"), (_lb.IDRAIN, "drain"),
                                          (_lb.FMAINT, "maint"), (_lb.IMAINT, "maint"), (_lb.RMAINT, "maint"),
                                          (_lb.FMAINT | _lb.FDRAIN, "maint"), (_lb.CMAINT, "ready"),
                                          (_lb.HMAINT, "ready")])
def test_admin_view(admin, state):
    assert _lb.admin_view(admin)["state"] == state


# -- against the fake runtime API ---------------------------------------------------------------------

@pytest.mark.parametrize("through", ["address", "socket"])
def test_drain_then_ready_each_idempotent_and_read_back(lb, through):
    item = lb.item() if through == "address" else dict(socket=lb.sock, backend="galera", server="galera-node3")
    out = apply([item], _lb.DRAIN)
    assert out["changed"] is True
    result = out["instances"][0]
    assert result["before"]["state"] == "ready" and result["after"]["state"] == "drain"
    assert result["commands"] == ["set server galera/galera-node3 state drain"]
    assert lb.admin() == _lb.FDRAIN
    assert lb.received == ["show servers state galera", "set server galera/galera-node3 state drain",
                           "show servers state galera"]
    assert apply([item], _lb.DRAIN)["changed"] is False
    out = apply([item], _lb.READY)
    assert out["changed"] is True and out["instances"][0]["after"]["state"] == "ready"
    assert lb.admin() == 0
    lb.received.clear()
    assert apply([item], _lb.READY)["changed"] is False
    assert lb.received == ["show servers state galera"]  # only read


def test_check_mode_reads_and_predicts_but_sends_no_change(lb):
    out = apply([lb.item()], _lb.DRAIN, check_mode=True)
    assert out["changed"] is True
    assert out["instances"][0]["after"] == dict(state="drain", admin_state=_lb.FDRAIN, operational="UP")
    assert out["instances"][0]["commands"] == ["set server galera/galera-node3 state drain"]
    assert lb.received == ["show servers state galera"]
    assert lb.admin() == 0


@pytest.mark.parametrize("admin, state", [(_lb.FMAINT, "maint"), (_lb.FDRAIN, "drain")])
def test_drain_leaves_a_server_someone_else_took_out(lb, admin, state):
    lb.backends["galera"]["galera-node3"]["admin"] = admin
    out = apply([lb.item()], _lb.DRAIN)
    assert out["changed"] is False
    assert f"already out of rotation ({state}" in out["instances"][0]["note"]
    assert "not put back by this run" in out["instances"][0]["note"]
    assert lb.admin() == admin  # a maintenance is not turned into a drain
    assert not any(c.startswith("set ") for c in lb.received)


def test_ready_does_not_touch_an_inherited_maintenance(lb):
    lb.backends["galera"]["galera-node3"]["admin"] = _lb.IMAINT
    out = apply([lb.item()], _lb.READY)
    assert out["changed"] is False and "a reason 'ready' does not clear" in out["instances"][0]["note"]
    assert not any(c.startswith("set ") for c in lb.received)


def test_shutdown_sessions_after_the_drain(lb):
    out = apply([lb.item(shutdown_sessions=True)], _lb.DRAIN)
    assert out["instances"][0]["commands"] == ["set server galera/galera-node3 state drain",
                                               "shutdown sessions server galera/galera-node3"]
    assert "shutdown sessions server galera/galera-node3" in lb.received
    apply([lb.item(shutdown_sessions=True)], _lb.READY)
    assert lb.received.count("shutdown sessions server galera/galera-node3") == 1  # never on ready


def test_a_server_that_does_not_exist_names_those_that_do(lb):
    with pytest.raises(GaleraError) as err:
        apply([lb.item(server="galera-node9")], _lb.DRAIN)
    msg = err.value.msg
    assert "backend galera has no server 'galera-node9' (it has: galera-node1, galera-node2, galera-node3)" in msg
    assert msg.endswith("Nothing was changed.")
    assert err.value.get("changed") is False
    assert not any(c.startswith("set ") for c in lb.received)


def test_a_backend_that_does_not_exist(lb):
    with pytest.raises(GaleraError, match="HAProxy has no backend 'mysql'.*Nothing was changed"):
        apply([lb.item(backend="mysql")], _lb.DRAIN)


def test_a_socket_below_level_admin_is_refused_naming_the_fix(lb):
    lb.level = "operator"
    with pytest.raises(GaleraError) as err:
        apply([lb.item(name="lb1")], _lb.DRAIN)
    assert "HAProxy lb1 (tcp " in err.value.msg and "refused 'set server galera/galera-node3 state drain'" in err.value.msg
    assert "level admin" in err.value.msg and err.value.msg.endswith("Nothing was changed.")


def test_an_instance_that_is_down_fails_after_the_others_were_done(lb, tmp_path):
    items = [dict(lb.item(), name="lb1"), dict(address=closed_port(), backend="galera", server="galera-node3",
                                               name="lb2"),
             dict(socket=str(tmp_path / "gone.sock"), backend="galera", server="galera-node3", name="lb3")]
    with pytest.raises(GaleraError) as err:
        apply(items, _lb.DRAIN)
    msg = err.value.msg
    assert "cannot reach the runtime API of HAProxy lb2" in msg and "Connection refused" in msg
    assert "cannot reach the runtime API of HAProxy lb3" in msg and "become" in msg
    assert msg.endswith("Set to drain (or maybe, where the answer was lost): HAProxy lb1 server galera/galera-node3.")
    results = err.value.get("instances")
    assert [r["changed"] for r in results] == [True, False, False]
    assert [bool(r.get("error")) for r in results] == [False, True, True]
    assert err.value.get("changed") is True
    assert lb.admin() == _lb.FDRAIN


def test_an_api_that_does_not_answer_times_out(lb):
    lb.mode = "silent"
    with pytest.raises(GaleraError, match="no answer within 0.2s"):
        apply([lb.item()], _lb.DRAIN, timeout=0.2)


def test_a_lost_answer_to_a_change_counts_as_changed(lb):
    real = _lb.command

    def talk(inst, text, timeout):
        if text.startswith("set "):
            real(inst, text, timeout)
            raise GaleraError("cannot reach the runtime API: connection reset", unreachable=True, sent=True)
        return real(inst, text, timeout)

    with pytest.raises(GaleraError) as err:
        _lb.apply(_lb.instances([lb.item()], "haproxy"), _lb.DRAIN, talk=talk)
    assert err.value.get("instances")[0]["changed"] is True  # so a caller puts it back


def test_a_change_that_does_not_read_back_fails(lb):
    lb.mode = "stuck"
    with pytest.raises(GaleraError, match="accepted 'set server galera/galera-node3 state drain' but reads back ready"):
        apply([lb.item()], _lb.DRAIN)


def test_a_socket_that_is_not_haproxy(lb):
    with pytest.raises(GaleraError, match="instead of a server state dump"):
        _lb.read_state(_lb.instance(lb.item(), "h"), talk=lambda inst, text, timeout: "SSH-2.0-OpenSSH_9.2\r\n")


def test_summary():
    out = dict(instances=[dict(name="lb1", backend="galera", server="n3", before=dict(state="ready"),
                               after=dict(state="drain")),
                          dict(name="lb2", backend="galera", server="n3", before=None, after=None, error="down")])
    assert _lb.summary(out) == "lb1 galera/n3 ready -> drain; lb2 galera/n3 None -> None (failed: down)"


# -- the module ---------------------------------------------------------------------------------------

def run_module(monkeypatch, capsys, args, check_mode=False, diff=False):
    from ansible.module_utils import basic  # pylint: disable=import-outside-toplevel
    from ansible_collections.dbtools.galera.plugins.modules import galera_lb  # pylint: disable=import-outside-toplevel
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    # Another test may have loaded controller code (a filter plugin), which sends warnings to the display
    # instead of the module's result: run as a module does, on a node.
    from ansible.module_utils import _internal  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(_internal, "is_controller", False)
    with pytest.raises(SystemExit):
        galera_lb.main()
    return json.loads(capsys.readouterr().out)


def test_module_rhythm_check_then_change_then_unchanged(lb, monkeypatch, capsys):
    args = dict(state="drain", haproxy=[lb.item(name="lb1", host="lb1.example.com", become=True)])
    out = run_module(monkeypatch, capsys, args, check_mode=True, diff=True)
    assert out["changed"] is True and lb.admin() == 0
    assert out["diff"] == {"before": {"lb1 galera/galera-node3": "ready"}, "after": {"lb1 galera/galera-node3": "drain"}}
    out = run_module(monkeypatch, capsys, args)
    assert out["changed"] is True and lb.admin() == _lb.FDRAIN
    out = run_module(monkeypatch, capsys, args)
    assert out["changed"] is False
    out = run_module(monkeypatch, capsys, dict(args, state="ready"))
    assert out["changed"] is True and lb.admin() == 0


def test_module_warns_about_a_server_left_as_it_was(lb, monkeypatch, capsys):
    lb.backends["galera"]["galera-node3"]["admin"] = _lb.FMAINT
    out = run_module(monkeypatch, capsys, dict(state="drain", haproxy=[lb.item()]))
    assert out["changed"] is False and "already out of rotation (maint" in json.dumps(out["warnings"])


def test_module_fails_on_hostile_input_naming_it(lb, monkeypatch, capsys):
    out = run_module(monkeypatch, capsys, dict(state="drain", haproxy=[lb.item(server="n3;disable server x/y")]))
    assert out["failed"] is True and "haproxy[0].server=" in out["msg"] and "Nothing was changed" in out["msg"]
    assert lb.received == []


def test_module_failure_returns_every_instance(lb, monkeypatch, capsys):
    items = [lb.item(name="lb1"), dict(address=closed_port(), backend="galera", server="galera-node3", name="lb2")]
    out = run_module(monkeypatch, capsys, dict(state="drain", haproxy=items, timeout=1))
    assert out["failed"] is True and out["changed"] is True
    assert [i["name"] for i in out["instances"]] == ["lb1", "lb2"]


# -- the watchdog puts the node back after its own resync ----------------------------------------------

OWNER = "t-owner"


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    monkeypatch.setattr(_watchdog, "RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(_watchdog, "LOG_FILE", str(tmp_path / "log" / "watchdog.log"))
    os.makedirs(tmp_path / "run")
    return install(monkeypatch)


def wd_params(**kw):
    base = dict(login_user=None, login_password=None, login_host="localhost", login_port=3306,
                login_unix_socket="/run/mysqld/mysqld.sock", config_file=None, ca_cert=None, client_cert=None,
                client_key=None, check_hostname=None, connect_timeout=5, owner=OWNER, lease_database="dbtools_galera",
                lease_ttl=60, min_cluster_size=2, max_recv_queue=None, drain_timeout=30, timeout=30, poll_interval=0.5,
                watchdog_hold_pid_file=None, watchdog_max_hold=21600, watchdog_max_recv_queue=0,
                watchdog_hard_limit_fraction=0.5, watchdog_min_free_bytes=0, watchdog_min_free_fraction=0,
                _gcache_local=False, watchdog_haproxy=[])
    base.update(kw)
    return base


def watchdog(cluster, **kw):
    params = wd_params(**kw)
    return _watchdog.Watchdog(params, OWNER, "galera-node3", session=_connection.Session(params), clock=cluster.clock,
                              sleep=cluster.clock.sleep, meminfo=lambda: {})


def drained(lb, cluster, expires=-1):
    lb.backends["galera"]["galera-node3"]["admin"] = _lb.FDRAIN
    cluster.node("galera-node3").desync = True
    cluster.put_lease(OWNER, "galera-node3", acquired=0, expires=expires)


def test_the_watchdog_puts_the_node_back_after_its_resync(cluster, lb):
    drained(lb, cluster)
    sockets_item = dict(socket="/run/haproxy/admin.sock", backend="galera", server="galera-node3", name="lb2",
                        host="lb2.example.com")
    assert watchdog(cluster, watchdog_haproxy=[lb.item(name="lb1"), sockets_item]).step() is True
    assert not cluster.node("galera-node3").desync and cluster.lease is None
    assert lb.admin() == 0
    events = [e["event"] for e in cluster.events]
    assert events == ["watchdog_resync", "watchdog_lb_failed", "watchdog_lb_ready"]
    assert "a Unix socket on HAProxy's host is out of reach" in cluster.events[1]["detail"]
    assert "back in rotation: lb1 galera/galera-node3 drain -> ready" in cluster.events[2]["detail"]


def test_the_watchdog_resyncs_even_when_haproxy_is_down_and_says_so(cluster, lb):
    drained(lb, cluster)
    dog = watchdog(cluster, watchdog_haproxy=[dict(address=closed_port(), backend="galera", server="galera-node3")])
    assert dog.step() is True
    assert not cluster.node("galera-node3").desync and cluster.lease is None
    assert cluster.events[-1]["event"] == "watchdog_lb_failed"
    assert f"after {_watchdog.LB_TRIES} tries" in cluster.events[-1]["detail"]


def test_the_watchdog_leaves_haproxy_alone_when_the_desync_ended_normally(cluster, lb):
    drained(lb, cluster, expires=60)
    dog = watchdog(cluster, watchdog_haproxy=[lb.item()])
    assert dog.step() is False
    cluster.lease = None                         # the controller resynced and released: it puts the node back itself
    cluster.node("galera-node3").desync = False
    assert dog.step() is True
    assert lb.admin() == _lb.FDRAIN
    assert not any(c.startswith("set ") for c in lb.received)


def test_the_watchdog_puts_the_node_back_after_a_takeover_resynced_it(cluster, lb):
    drained(lb, cluster)
    cluster.put_lease("taker", "galera-node1", acquired=5, expires=300)
    dog = watchdog(cluster, watchdog_haproxy=[lb.item()])
    assert dog.step() is False                   # waiting for the taker to resync this node
    cluster.node("galera-node3").desync = False  # it did
    assert dog.step() is True
    assert lb.admin() == 0


# -- galera_desync: the watchdog's HAProxy instances and pxc_maint_mode --------------------------------

def desync_params(**kw):
    base = wd_params(state="desynced", force=False, lease=True, watchdog=True, pxc_maint_mode=False,
                     watchdog_min_free_bytes=0)
    base.pop("_gcache_local")
    base.update(kw)
    return base


class FakeWatchdog:
    def __init__(self):
        self.armed = []

    def prepare(self, owner, node_name):
        return {}

    def arm(self, params, owner, node_name):
        self.armed.append(params)
        return dict(pid=1, state_file="/x", log_file="/y", started=True)


def desyncer(cluster, **kw):
    from ansible_collections.dbtools.galera.plugins.module_utils import _wsrep  # pylint: disable=import-outside-toplevel
    warnings = []
    conn = cluster.connect(unix_socket="/run/mysqld/mysqld.sock")
    d = _desync.Desyncer(desync_params(**kw), _wsrep.Node(conn), False, warnings.append, watchdog=FakeWatchdog(),
                         clock=cluster.clock, sleep=cluster.clock.sleep)
    d.warnings = warnings
    return d


def test_desync_hands_the_instances_to_the_watchdog_and_warns_about_what_it_cannot_reach(cluster, lb):
    items = [lb.item(name="lb1"), dict(address=closed_port(), backend="galera", server="galera-node3", name="lb2"),
             dict(socket="/run/haproxy/admin.sock", backend="galera", server="galera-node3", name="lb3")]
    d = desyncer(cluster, watchdog_haproxy=items)
    d.desynced()
    assert cluster.node("galera-node3").desync
    assert d.watchdog.armed[0]["watchdog_haproxy"] == items
    text = " ".join(d.warnings)
    assert "cannot reach HAProxy from node galera-node3" in text and "HAProxy lb2" in text
    assert "cannot put the node back in HAProxy lb3" in text
    assert "lb1" not in text
    assert lb.received == ["show servers state galera"]  # read once, never changed by galera_desync


def test_desync_refuses_a_hostile_watchdog_item_before_anything(cluster, lb):
    with pytest.raises(GaleraError, match=r"watchdog_haproxy\[0\]\.backend=.*Nothing was changed"):
        desyncer(cluster, watchdog_haproxy=[lb.item(backend="galera;disable server galera/galera-node1")])
    assert not cluster.node("galera-node3").desync and cluster.lease is None


# pxc_maint_mode, on a fake node that speaks it (Percona XtraDB Cluster) or not (MariaDB).

@pytest.fixture
def pxc(monkeypatch):
    import fake_galera  # pylint: disable=import-outside-toplevel,import-error
    state = dict(value="DISABLED", statements=[], fail=None)
    real_execute = fake_galera.Connection.execute
    real_rows = fake_galera.Node.variable_rows

    def execute(self, sql, args):
        if "pxc_maint_mode" in sql:
            state["statements"].append((sql, self.server.desync))
            if state["value"] is None:
                if sql.startswith("SHOW"):
                    return ()
                raise fake_galera.mysql_error(1193, "Unknown system variable 'pxc_maint_mode'")
            if sql.startswith("SHOW"):
                return (("pxc_maint_mode", state["value"]),)
            if state["fail"] and state["fail"] in sql:
                raise fake_galera.mysql_error(1227, "Access denied; you need SUPER")
            state["value"] = sql.rsplit("'", 2)[1]
            return ()
        return real_execute(self, sql, args)

    def variable_rows(self):
        rows = real_rows(self)
        if state["value"] is None:
            return rows
        return [(k, "8.0.36-28.1" if k == "version" else "Percona XtraDB Cluster (GPL), Release rel28"
                 if k == "version_comment" else v) for k, v in rows]

    monkeypatch.setattr(fake_galera.Connection, "execute", execute)
    monkeypatch.setattr(fake_galera.Node, "variable_rows", variable_rows)
    return state


def test_pxc_maint_mode_is_set_before_the_desync_and_cleared_after_synced(cluster, pxc):
    d = desyncer(cluster, pxc_maint_mode=True)
    out = d.desynced()
    assert out["pxc_maint_mode"] == dict(before="DISABLED", after="MAINTENANCE", changed=True)
    sets = [(sql, desynced) for sql, desynced in pxc["statements"] if sql.startswith("SET")]
    assert sets == [("SET GLOBAL pxc_maint_mode = 'MAINTENANCE'", False)]  # before wsrep_desync=ON
    assert d.watchdog.armed[0]["_pxc_maint_mode_ours"] is True
    out = desyncer(cluster, state="synced", pxc_maint_mode=True).synced()
    assert out["pxc_maint_mode"] == dict(before="MAINTENANCE", after="DISABLED", changed=True)
    assert pxc["value"] == "DISABLED"
    assert pxc["statements"][-1] == ("SET GLOBAL pxc_maint_mode = 'DISABLED'", False)  # after the resync


def test_pxc_maint_mode_set_by_someone_else_is_left(cluster, pxc):
    pxc["value"] = "MAINTENANCE"
    d = desyncer(cluster, pxc_maint_mode=True)
    out = d.desynced()
    assert out["pxc_maint_mode"] == dict(before="MAINTENANCE", after="MAINTENANCE", changed=False)
    assert d.watchdog.armed[0]["_pxc_maint_mode_ours"] is False
    assert not any(sql.startswith("SET") for sql, _d in pxc["statements"])


def test_pxc_maint_mode_is_refused_on_mariadb_changing_nothing(cluster, pxc):
    pxc["value"] = None
    d = desyncer(cluster, pxc_maint_mode=True)
    with pytest.raises(GaleraError, match="needs Percona XtraDB Cluster, but node galera-node3 is mariadb.*"
                                          "Nothing was changed"):
        d.desynced()
    assert not cluster.node("galera-node3").desync and cluster.lease is None


def test_a_failed_maintenance_switch_changes_nothing(cluster, pxc):
    pxc["fail"] = "MAINTENANCE"
    with pytest.raises(Exception, match="SUPER"):
        desyncer(cluster, pxc_maint_mode=True).desynced()
    assert not cluster.node("galera-node3").desync and cluster.lease is None and pxc["value"] == "DISABLED"


def test_pxc_maint_mode_is_cleared_even_when_the_resync_fails(cluster, pxc):
    desyncer(cluster, pxc_maint_mode=True).desynced()
    cluster.node("galera-node3").stuck = True
    with pytest.raises(GaleraError, match="did not reach Synced"):
        desyncer(cluster, state="synced", pxc_maint_mode=True, timeout=2).synced()
    assert pxc["value"] == "DISABLED"


def test_the_watchdog_clears_the_pxc_maint_mode_it_set(cluster, pxc):
    pxc["value"] = "MAINTENANCE"
    cluster.node("galera-node3").desync = True
    cluster.put_lease(OWNER, "galera-node3", acquired=0, expires=-1)
    assert watchdog(cluster, _pxc_maint_mode_ours=True).step() is True
    assert pxc["value"] == "DISABLED"
    assert "pxc_maint_mode set back to DISABLED" in cluster.events[-1]["detail"]


def test_the_watchdog_leaves_a_pxc_maint_mode_it_did_not_set(cluster, pxc):
    pxc["value"] = "MAINTENANCE"
    cluster.node("galera-node3").desync = True
    cluster.put_lease(OWNER, "galera-node3", acquired=0, expires=-1)
    assert watchdog(cluster, _pxc_maint_mode_ours=False).step() is True
    assert pxc["value"] == "MAINTENANCE"
