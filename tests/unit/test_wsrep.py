# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading and judging a node's wsrep state, gcache's filesystem, and the wait-for-ready loop."""

from __future__ import annotations

import socket

import pytest
from fake_galera import install, lost, once  # pylint: disable=import-error

from ansible_collections.dbtools.galera.plugins.module_utils import _connection, _resync, _wsrep
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

SYNCED_3 = dict(local_state=4, local_state_comment="Synced", cluster_status="Primary", ready=True,
                cluster_size=3, recv_queue=0)


@pytest.mark.parametrize("name, raw, expected", [
    ("wsrep_cluster_size", "3", 3),
    ("wsrep_local_recv_queue_avg", "0.125", 0.125),
    ("wsrep_ready", "ON", True),
    ("wsrep_desync", "OFF", False),
    ("wsrep_local_state_comment", "Donor/Desynced", "Donor/Desynced"),
    ("wsrep_cluster_state_uuid", "0a9b96b8-e84e-11f1-8837-e61f78bb5eef", "0a9b96b8-e84e-11f1-8837-e61f78bb5eef"),
    ("wsrep_node_name", "1", "1"),
    ("wsrep_cluster_conf_id", "18446744073709551615", 18446744073709551615),
    ("version", "10.11.19-MariaDB-0+deb12u1", "10.11.19-MariaDB-0+deb12u1"),
    ("wsrep_flow_control_paused", b"0.5", 0.5),
    ("x", "nan", "nan"),
    ("x", None, None),
])
def test_parse_value(name, raw, expected):
    assert _wsrep.parse_value(name, raw) == expected


def test_parse_rows_lower_cases_names():
    assert _wsrep.parse_rows([("WSREP_READY", "ON"), ("wsrep_local_state", "4")]) == {
        "wsrep_ready": True, "wsrep_local_state": 4}


def test_parse_provider_options():
    text = ("base_port = 4567; gcache.size = 256M; gcs.fc_factor = 1.0; gcs.fc_limit = 16; "
            "pc.ignore_sb = false; evs.delay_margin = PT1S; ")
    opts = _wsrep.parse_provider_options(text)
    assert opts["gcs.fc_limit"] == 16
    assert opts["gcs.fc_factor"] == 1.0
    assert opts["pc.ignore_sb"] is False
    assert opts["gcache.size"] == "256M"
    assert opts["evs.delay_margin"] == "PT1S"
    assert _wsrep.parse_provider_options(None) == {}


@pytest.mark.parametrize("value, expected", [
    ("256M", 256 << 20), ("1G", 1 << 30), ("128k", 128 << 10), (1048576, 1048576), ("1.5G", int(1.5 * (1 << 30))),
    ("junk", None), (None, None), (True, None),
])
def test_parse_size(value, expected):
    assert _wsrep.parse_size(value) == expected


@pytest.mark.parametrize("options, expected", [
    ({}, 8),
    ({"gcs.fc_limit": 16, "gcs.fc_factor": 1.0}, 8),
    ({"gcs.fc_limit": 100, "gcs.fc_factor": 0.8}, 40),
    ({"gcs.fc_limit": 1, "gcs.fc_factor": 0.5}, 0),
    ({"gcs.fc_limit": "bogus"}, 8),
])
def test_default_max_recv_queue_is_half_the_resume_point(options, expected):
    assert _wsrep.default_max_recv_queue(options) == expected


@pytest.mark.parametrize("variables, expected", [
    ({"version": "10.11.19-MariaDB-0+deb12u1", "version_comment": "Debian 12"}, "mariadb"),
    ({"version": "8.0.36-28.1", "version_comment": "Percona XtraDB Cluster (GPL), Release rel28"},
     "percona-xtradb-cluster"),
    ({"version": "8.0.35", "version_comment": "MySQL Community Server - (GPL), wsrep_26.1.4.3"}, "mysql-wsrep"),
])
def test_detect_flavor(variables, expected):
    assert _wsrep.detect_flavor(variables) == expected


@pytest.mark.parametrize("variables, status, fragment", [
    ({}, {}, "no wsrep support"),
    ({"wsrep_on": False}, {}, "wsrep_on is OFF"),
    ({"wsrep_on": True, "wsrep_provider": "none"}, {}, "wsrep_provider is 'none'"),
    ({"wsrep_on": True, "wsrep_provider": "/usr/lib/galera/libgalera_smm.so"}, {}, "provider is not running"),
])
def test_is_galera_says_why_not(variables, status, fragment):
    assert fragment in _wsrep.is_galera(variables, status)


def test_is_galera_accepts_a_running_node():
    assert _wsrep.is_galera({"wsrep_on": True, "wsrep_provider": "/x.so"}, {"wsrep_local_state": 4}) is None


def test_desync_allowed_on_synced_member_of_three():
    assert _wsrep.desync_refusals(SYNCED_3, 2) == []


@pytest.mark.parametrize("change, min_size, fragment", [
    ({"cluster_status": "non-Primary"}, 2, "not in a Primary component (wsrep_cluster_status=non-Primary)"),
    ({"ready": False}, 2, "not ready (wsrep_ready=OFF)"),
    ({"local_state": 2, "local_state_comment": "Donor/Desynced"}, 2, "not Synced (wsrep_local_state_comment=Donor/Desynced)"),
    ({"local_state": 3, "local_state_comment": "Joined"}, 2, "not Synced"),
    ({"cluster_size": 2}, 2, "leave 1 synced member(s) of 2, fewer than min_cluster_size=2"),
    ({}, 3, "fewer than min_cluster_size=3"),
])
def test_desync_refusals_name_the_cause(change, min_size, fragment):
    reasons = _wsrep.desync_refusals(dict(SYNCED_3, **change), min_size)
    assert len(reasons) == 1
    assert fragment in reasons[0]


def test_wait_conditions_met_and_unmet():
    assert _wsrep.wait_conditions(SYNCED_3, 0, 3) == []
    unmet = _wsrep.wait_conditions(dict(SYNCED_3, local_state=3, local_state_comment="Joined", recv_queue=40), 8, 3)
    assert unmet == ["wsrep_local_state_comment is Joined, not Synced",
                     "wsrep_local_recv_queue is 40, above max_recv_queue=8"]
    assert _wsrep.wait_conditions(dict(SYNCED_3, cluster_size=2), 8, 3) == [
        "wsrep_cluster_size is 2, below min_cluster_size=3"]


@pytest.mark.parametrize("variables, expected", [
    ({"wsrep_node_incoming_address": "AUTO", "wsrep_node_address": "galera-node3", "port": 3306}, "galera-node3:3306"),
    ({"wsrep_node_incoming_address": "10.0.0.5:3307", "wsrep_node_address": "x"}, "10.0.0.5:3307"),
    ({"wsrep_node_incoming_address": "AUTO", "wsrep_node_address": "10.0.0.5:4567", "port": 3310}, "10.0.0.5:3310"),
    ({"wsrep_node_incoming_address": "AUTO", "wsrep_node_address": "[fd00::5]:4567", "port": 3306}, "[fd00::5]:3306"),
    ({"wsrep_node_incoming_address": "AUTO", "hostname": "db1"}, "db1:3306"),
    ({}, None),
])
def test_client_address(variables, expected):
    assert _wsrep.client_address(variables) == expected


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_poller_yields_until_timeout_with_bounded_sleeps():
    clock = FakeClock()
    poller = _wsrep.Poller(2.5, 1.0, clock=clock, sleep=clock.sleep)
    seen = list(poller)
    assert seen == [0.0, 1.0, 2.0, 2.5]
    assert poller.polls == 4
    assert poller.elapsed == 2.5


def test_poller_stops_when_caller_breaks():
    clock = FakeClock()
    poller = _wsrep.Poller(60, 1.0, clock=clock, sleep=clock.sleep)
    for elapsed in poller:
        if elapsed >= 3:
            break
    assert poller.polls == 4


def test_poller_backs_off_from_first_interval_to_interval():
    clock = FakeClock()
    poller = _wsrep.Poller(2.0, 0.5, clock=clock, sleep=clock.sleep, first_interval=0.1)
    seen = [round(t, 3) for t in poller]
    assert seen == [0.0, 0.1, 0.3, 0.7, 1.2, 1.7, 2.0]


def test_poller_with_zero_timeout_polls_once():
    clock = FakeClock()
    assert list(_wsrep.Poller(0, 1.0, clock=clock, sleep=clock.sleep)) == [0.0]


# -- gcache's directory and its filesystem ---------------------------------------------------------

@pytest.mark.parametrize("variables, provider, expected", [
    ({"datadir": "/var/lib/mysql/"}, {}, "/var/lib/mysql/"),
    ({"datadir": "/var/lib/mysql/"}, {"gcache.dir": "/gcache"}, "/gcache"),
    ({"datadir": "/var/lib/mysql/"}, {"gcache.dir": "  "}, "/var/lib/mysql/"),
    ({}, {}, None),
])
def test_gcache_dir(variables, provider, expected):
    assert _wsrep.gcache_dir(variables, provider) == expected


def test_filesystem_space(tmp_path):
    space = _wsrep.filesystem_space(str(tmp_path))
    assert 0 <= space["free_bytes"] <= space["total_bytes"] and space["total_bytes"] > 0
    assert _wsrep.filesystem_space(str(tmp_path / "absent")) is None
    assert _wsrep.filesystem_space(None) is None


class _Conn:
    def __init__(self, unix_socket=None):
        self.unix_socket = unix_socket


def test_on_this_host():
    me = socket.gethostname()
    assert _wsrep.on_this_host(_Conn("/run/mysqld/mysqld.sock"), {"hostname": "elsewhere"})
    assert _wsrep.on_this_host(_Conn(), {"hostname": me})
    assert not _wsrep.on_this_host(_Conn(), {"hostname": "elsewhere-" + me})
    assert not _wsrep.on_this_host(_Conn(), {})


# -- galera_wait_synced's loop against a fake node ---------------------------------------------------

def _params():
    return dict(login_user=None, login_password=None, login_host="localhost", login_port=3306,
                login_unix_socket="/run/mysqld/mysqld.sock", config_file=None, ca_cert=None, client_cert=None,
                client_key=None, check_hostname=None, connect_timeout=5)


def _wait(cluster, **kw):
    args = dict(timeout=10, poll_interval=0.5, max_queue=None, min_cluster_size=3)
    args.update(kw)
    return _resync.wait_until_ready(_connection.Session(_params()), args["timeout"], args["poll_interval"],
                                    args["max_queue"], args["min_cluster_size"], clock=cluster.clock,
                                    sleep=cluster.clock.sleep)


def test_wait_until_ready_at_once(monkeypatch):
    cluster = install(monkeypatch)
    out = _wait(cluster)
    assert out["polls"] == 1 and out["changed"] is False and out["max_recv_queue"] == 8
    assert out["status"]["local_state_comment"] == "Synced"


def test_wait_until_ready_through_an_unreachable_server_and_a_lost_connection(monkeypatch):
    cluster = install(monkeypatch)
    node = cluster.node("galera-node3")
    cluster.local = None                       # the server is not up yet
    node.queue = 100
    node.drain_per_second = 20
    node.fail["SHOW GLOBAL STATUS"] = once(lost())

    def start(seconds):
        cluster.clock.advance(seconds)
        cluster.local = node                   # up after the first sleep

    out = _resync.wait_until_ready(_connection.Session(_params()), 30, 0.5, None, 3, clock=cluster.clock, sleep=start)
    assert out["status"]["recv_queue"] <= 8 and out["max_recv_queue_seen"] > 8
    assert out["polls"] > 3 and len(cluster.connections) == 2


def test_wait_until_ready_timeout_names_every_false_condition(monkeypatch):
    cluster = install(monkeypatch)
    node = cluster.node("galera-node3")
    node.desync = True
    node.queue = 40
    node.drain_per_second = 0
    with pytest.raises(GaleraError) as info:
        _wait(cluster, timeout=2, min_cluster_size=4)
    text = info.value.msg
    assert "node not in sync after 2.0s" in text
    assert "wsrep_local_state_comment is Donor/Desynced, not Synced" in text
    assert "wsrep_local_recv_queue is 40, above max_recv_queue=8" in text
    assert "wsrep_cluster_size is 3, below min_cluster_size=4" in text
    assert info.value.get("polls") >= 3 and info.value.get("max_recv_queue_seen") == 40


def test_wait_until_ready_fails_at_once_on_a_refused_login(monkeypatch):
    cluster = install(monkeypatch)
    cluster.local = None

    def deny(**kwargs):
        raise _connection.pymysql.err.OperationalError(1045, "Access denied for user 'root'@'localhost'")

    monkeypatch.setattr(_connection.pymysql, "connect", deny)
    with pytest.raises(GaleraError, match="Access denied") as info:
        _wait(cluster)
    assert cluster.clock.now == 0 and info.value.get("unreachable") is False


def test_drain_waits_for_the_queue_to_stay_drained_before_resync():
    """A queue that dips under the threshold once and grows again is not drained: OFF then would put
    the node in JOINED with a growing queue."""
    from ansible_collections.dbtools.galera.plugins.module_utils import _resync  # noqa: PLC0415

    queues = iter([40, 5, 30, 4, 3, 2, 2, 2])
    clock = [0.0]

    class Node:
        desync_off_at = None

        def status(self):
            return {"wsrep_local_recv_queue": next(queues), "wsrep_local_state": 4}

        def set_desync(self, on):
            assert on is False
            Node.desync_off_at = clock[0]

    def sleep(seconds):
        clock[0] += seconds

    resync = _resync.Resync(60, 10, 0.5, 8, lambda text: None, clock=lambda: clock[0], sleep=sleep)
    out = resync.drain_and_resync(Node())
    # 40 (wait 0.5) 5 (settle 0.05) 30 (reset, wait 0.5) 4, 3, 2: three drained reads in a row
    assert out["drained"] and out["max_recv_queue_seen"] == 40
    assert abs(Node.desync_off_at - (0.5 + 0.05 + 0.5 + 0.05 + 0.05)) < 1e-9


def test_local_gcomm_uuid_reads_gvwstate(tmp_path):
    (tmp_path / "gvwstate.dat").write_text("my_uuid: 394cb4b3-edfa-11f1-987f-6ae9239b0642\n#vwbeg\nview_id: 3 x 3\n")
    assert _wsrep.local_gcomm_uuid(str(tmp_path)) == "394cb4b3-edfa-11f1-987f-6ae9239b0642"
    assert _wsrep.local_gcomm_uuid(str(tmp_path / "missing")) is None
    assert _wsrep.local_gcomm_uuid(None) is None
