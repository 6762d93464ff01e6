from __future__ import annotations

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _desync, _lease


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
    with pytest.raises(_lease.LeaseError, match="not a plain database name"):
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
    with pytest.raises(_connection.GaleraConnectionError, match="cannot read config_file"):
        _connection.connect_kwargs(params(config_file=str(cnf)))
