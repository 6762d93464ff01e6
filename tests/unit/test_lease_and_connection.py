# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lease's rules, the connection options, the session and the module's failure details."""

from __future__ import annotations

import pytest
from fake_galera import install  # pylint: disable=import-error

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _desync, _lease, _module, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError


def row(owner="a", node="n1", expired=False):
    return dict(owner=owner, node=node, expired=expired, acquired_at="2026-01-01 00:00:00",
                expires_at="2026-01-01 01:00:00")


@pytest.mark.parametrize("current, owner, node, expected", [
    (None, "a", "n1", _lease.FREE),
    (row(), "a", "n1", _lease.OURS),
    (row(expired=True), "a", "n1", _lease.OURS),
    (row(), "b", "n1", _lease.HELD),
    (row(), "a", "n2", _lease.HELD),
    (row(expired=True), "b", "n2", _lease.EXPIRED),
])
def test_judge(current, owner, node, expected):
    assert _lease.judge(current, owner, node) == expected


def test_describe_names_node_owner_and_expiry():
    text = _lease.describe(row())
    assert "node n1" in text and "owner 'a'" in text and "expires 2026-01-01 01:00:00 UTC" in text


@pytest.mark.parametrize("name, ok", [
    ("dbtools_galera", True), ("a$b1", True), ("x" * 64, True), ("x" * 65, False), ("", False),
    ("db`; DROP", False), ("db.table", False), ("db-name", False),
])
def test_database_name_validation(name, ok):
    assert _lease.valid_database_name(name) is ok


def test_lease_rejects_bad_database_name_before_any_query():
    with pytest.raises(GaleraError, match="not a plain database name"):
        _lease.Lease(node=None, database="x`y")


@pytest.mark.parametrize("address, expected", [
    ("galera-node3:3306", ("galera-node3", 3306)),
    ("10.0.0.1", ("10.0.0.1", 3306)),
    ("[fd00::1]:3307", ("fd00::1", 3307)),
    ("galera-node1:0", ("galera-node1", 3306)),
    (None, (None, 3306)),
])
def test_host_port(address, expected):
    assert _desync.host_port(address) == expected


def params(**kw):
    base = dict(login_user=None, login_password=None, login_host="localhost", login_port=3306,
                login_unix_socket=None, config_file=None, ca_cert=None, client_cert=None, client_key=None,
                check_hostname=None, connect_timeout=30)
    base.update(kw)
    return base


def test_connect_kwargs_explicit_options_win_over_config_file(tmp_path):
    cnf = tmp_path / "my.cnf"
    cnf.write_text("[client]\nuser = fileuser\npassword = 'file pw'\nhost = db.example\nport = 3307\n"
                   "!includedir /etc/mysql/conf.d/\n")
    kw = _connection.connect_kwargs(params(config_file=str(cnf)))
    assert kw["user"] == "fileuser" and kw["password"] == "file pw"
    assert kw["host"] == "db.example" and kw["port"] == 3307 and "unix_socket" not in kw
    kw = _connection.connect_kwargs(params(config_file=str(cnf), login_user="me", login_password="",
                                           login_host="other", login_port=3310))
    assert (kw["user"], kw["password"], kw["host"], kw["port"]) == ("me", "", "other", 3310)


def test_connect_kwargs_socket_and_tls(tmp_path):
    kw = _connection.connect_kwargs(params(login_unix_socket="/tmp/x.sock", login_host="ignored"))
    assert kw["unix_socket"] == "/tmp/x.sock" and "host" not in kw
    kw = _connection.connect_kwargs(params(login_host="db", ca_cert="/ca.pem", client_cert="/c.pem",
                                           client_key="/k.pem"))
    assert kw["ssl_ca"] == "/ca.pem" and kw["ssl_cert"] == "/c.pem" and kw["ssl_key"] == "/k.pem"
    assert kw["ssl_verify_cert"] is True and kw["ssl_verify_identity"] is True
    kw = _connection.connect_kwargs(params(login_host="db", ca_cert="/ca.pem", check_hostname=False))
    assert kw["ssl_verify_identity"] is False


def test_connect_kwargs_missing_config_file_is_ignored(tmp_path):
    kw = _connection.connect_kwargs(params(config_file=str(tmp_path / "absent.cnf"), login_host="db"))
    assert kw["host"] == "db" and "user" not in kw and "password" not in kw


def test_unreadable_config_file_is_a_clear_error(tmp_path):
    cnf = tmp_path / "bad.cnf"
    cnf.write_text("user = outside any section\n")
    with pytest.raises(GaleraError, match="cannot read config_file") as info:
        _connection.connect_kwargs(params(config_file=str(cnf)))
    assert info.value.get("unreachable") is False


def test_address_forces_tcp_and_ignores_every_socket_and_the_files_host_and_port(tmp_path, monkeypatch):
    """The takeover's connection to another node: the review found ~/.my.cnf's socket winning."""
    cnf = tmp_path / "my.cnf"
    cnf.write_text("[client]\nuser = fileuser\npassword = filepw\nsocket = /run/mysqld/mysqld.sock\n"
                   "host = localhost\nport = 3307\n")
    monkeypatch.setattr(_connection, "DEFAULT_SOCKETS", (str(cnf),))  # a "socket" that exists
    given = params(config_file=str(cnf), login_unix_socket="/tmp/x.sock")
    assert _connection.connect_kwargs(given)["unix_socket"] == "/tmp/x.sock"
    kw = _connection.connect_kwargs(given, address=("galera-node2", 3306))
    assert "unix_socket" not in kw
    assert (kw["host"], kw["port"]) == ("galera-node2", 3306)
    assert (kw["user"], kw["password"]) == ("fileuser", "filepw")  # credentials still apply
    with pytest.raises(GaleraError, match="no host"):
        _connection.connect_kwargs(given, address=(None, 3306))


def test_connect_errors_say_whether_the_server_is_there(monkeypatch):
    def refuse(**kwargs):
        raise _connection.pymysql.err.OperationalError(2003, "Can't connect to MySQL server on 'db' (111)")

    monkeypatch.setattr(_connection.pymysql, "connect", refuse)
    with pytest.raises(GaleraError, match="check that the server runs") as info:
        _connection.connect(params(login_host="db"))
    assert info.value.get("unreachable") is True and info.value.get("errno") == 2003

    def deny(**kwargs):
        raise _connection.pymysql.err.OperationalError(1045, "Access denied for user 'x'")

    monkeypatch.setattr(_connection.pymysql, "connect", deny)
    with pytest.raises(GaleraError, match="check login_user/login_password") as info:
        _connection.connect(params(login_host="db", login_password="$(rm -rf /)'\"`"))
    assert info.value.get("unreachable") is False
    assert "rm -rf" not in info.value.msg


def test_session_connects_once_reconnects_after_drop_and_runs_its_init(monkeypatch):
    cluster = install(monkeypatch)
    session = _connection.Session(params(login_unix_socket="/run/mysqld/mysqld.sock"),
                                  init=("SET SESSION lock_wait_timeout = 5",))
    first = session.connection()
    assert session.connection() is first and first.statements == ["SET SESSION lock_wait_timeout = 5"]
    session.drop()
    assert not first.open
    second = session.connection()
    assert second is not first and len(cluster.connections) == 2
    with session:
        pass
    assert not second.open and session.conn is None


def test_module_failure_details_never_mark_the_host_unreachable():
    exc = GaleraError("cannot connect", errno=2003, unreachable=True, failed=False, _keep_lease=True,
                      holder={"owner": "a"}, changed=True)
    assert _module.result_details(exc, queries=["q"]) == dict(errno=2003, holder={"owner": "a"}, changed=True,
                                                              queries=["q"])


def test_lease_read_notes_a_missing_table_and_ensure_creates_only_that(monkeypatch):
    cluster = install(monkeypatch)
    cluster.schema = {"database", "desync_events"}
    lease = _lease.Lease(_wsrep.Node(cluster.connect(unix_socket="/s")), "dbtools_galera")
    assert lease.read() is None and lease.table_missing is True
    assert lease.ensure() == ["desync_lease"]
    assert len(cluster.ddl) == 1 and "CREATE TABLE IF NOT EXISTS `dbtools_galera`.`desync_lease`" in cluster.ddl[0]
    assert lease.ensure() == [] and len(cluster.ddl) == 1


def test_lease_privilege_errors_name_the_grant(monkeypatch):
    cluster = install(monkeypatch)
    node = cluster.node("galera-node3")
    node.fail["desync_lease"] = _connection.pymysql.err.OperationalError(
        1142, "SELECT command denied to user 'backup'@'localhost' for table `dbtools_galera`.`desync_lease`")
    lease = _lease.Lease(_wsrep.Node(cluster.connect(unix_socket="/s")), "dbtools_galera")
    with pytest.raises(GaleraError, match=r"Grant the connecting user CREATE, SELECT, INSERT, UPDATE, DELETE ON "
                                          r"`dbtools_galera`\.\*.*lease: false") as info:
        lease.read()
    assert info.value.get("errno") == 1142


def test_restore_puts_back_the_old_row_only_while_ours(monkeypatch):
    cluster = install(monkeypatch)
    cluster.put_lease("old", "galera-node2", acquired=-600, expires=-300)
    old_row = None
    lease = _lease.Lease(_wsrep.Node(cluster.connect(unix_socket="/s")), "dbtools_galera")
    old_row = lease.read()
    lease.acquire("new", "galera-node3", "galera-node3:3306", "dbtools", 60, 0, replace=old_row)
    assert cluster.lease["owner"] == "new"
    assert lease.restore(old_row, "new", "galera-node3") is True
    assert lease.read() == old_row
    assert lease.restore(old_row, "new", "galera-node3") is False  # not ours any more: untouched
    assert lease.read() == old_row


def test_acquire_refuses_to_replace_a_row_that_changed_meanwhile(monkeypatch):
    cluster = install(monkeypatch)
    cluster.put_lease("old", "galera-node2", acquired=-600, expires=-300)
    lease = _lease.Lease(_wsrep.Node(cluster.connect(unix_socket="/s")), "dbtools_galera")
    seen = lease.read()
    cluster.put_lease("old", "galera-node2", acquired=-100, expires=-1)  # renewed and expired again
    with pytest.raises(GaleraError, match="the desync lease is taken") as info:
        lease.acquire("new", "galera-node3", None, "dbtools", 60, 0, replace=seen)
    assert info.value.get("conflict") is True
    assert cluster.lease["owner"] == "old"


@pytest.mark.parametrize("hostile", ["$(touch /tmp/pwned)", "a'b", "`id`", "x\ny", "../../etc", "other_cluster_owner"])
def test_hostile_owner_names_travel_as_bound_values(monkeypatch, hostile):
    cluster = install(monkeypatch)
    conn = cluster.connect(unix_socket="/s")
    lease = _lease.Lease(_wsrep.Node(conn), "dbtools_galera")
    lease.read()
    lease.acquire(hostile, "galera-node3", None, "dbtools", 60, 0)
    assert cluster.lease["owner"] == hostile
    assert not any(hostile in s for s in conn.statements)  # never inside the SQL text
    assert lease.release(hostile, "galera-node3") is True
