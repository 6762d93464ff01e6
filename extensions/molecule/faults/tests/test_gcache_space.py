"""The gcache space guard on a small filesystem, under write load (issue 16 item 7).

A desynced node keeps every write-set it has not applied in gcache; past ``gcache.size`` they spill into
``gcache.page.*`` files in ``gcache.dir``. Here galera-node3's gcache.dir is a 64 MiB tmpfs
(config.yml), with a 16 MiB ring buffer and 1 MiB pages, and galera-node1 writes about 2 MiB/s:

* pre-flight refuses with the defaults (the 1 GiB reserve does not fit on that filesystem), and with
  a smaller reserve because the measured write rate x galera_backup_max_duration cannot fit, with the
  figures; nothing is changed;
* a backup that passed pre-flight (no writes then) is stopped by the watchdog when the write load
  fills gcache pages while the applier is stalled (and the backup tool too, so that it cannot end
  first): the node is resynced long before the filesystem is full, and mariadbd never ran out of space.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import admin_connection, playbook_command, playbook_env, run_playbook

testinfra_hosts = ["galera"]
NODES = ("galera-node1", "galera-node2", "galera-node3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tests", "tools"))

import freeze_applier  # noqa: E402

NODE = "galera-node3"
WRITER = "galera-node1"
GCACHE_DIR = "/var/lib/gcache-small"  # a 64 MiB tmpfs on galera-node3 (config.yml)
CNF = "/etc/mysql/mariadb.conf.d/80-gcache-small.cnf"
BACKUP_DIR = "/var/backups/galera-gcache"
MIB = 1 << 20
# Each UPDATE replicates the row's before and after image: ~128 KiB write-sets, ~16 a second, ~2 MiB/s.
# The 16 MiB ring buffer holds what a Synced node keeps (gcache is released some 32-64 write-sets late, so
# bigger write-sets or a smaller ring would spill into pages even without a desync).
ROW = 64 * 1024
LOAD_INTERVAL = 0.05
LOAD_FLOOR = 4 * MIB      # the load stops below this much free space: a full gcache filesystem aborts mariadbd
WATCHDOG_LOG = "/var/log/dbtools-galera/watchdog.log"


def one(conn, query, args=None):
    with conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchone()


def node_sh(command: str, check: bool = True) -> subprocess.CompletedProcess:
    """A fixed command line on galera-node3 (no test data in it)."""
    return subprocess.run(["docker", "exec", NODE, "sh", "-c", command], capture_output=True, text=True,
                          check=check, timeout=600)


def free_bytes() -> int:
    out = node_sh(f"stat -f -c '%a %S' {GCACHE_DIR}").stdout.split()
    return int(out[0]) * int(out[1])


def wait_synced(timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = admin_connection(NODE)
            try:
                state = one(conn, "SHOW STATUS LIKE 'wsrep_local_state_comment'")[1]
                size = int(one(conn, "SHOW STATUS LIKE 'wsrep_cluster_size'")[1])
            finally:
                conn.close()
            if state == "Synced" and size == len(NODES):
                return
        except Exception:  # restarting
            pass
        time.sleep(1)
    raise AssertionError(f"{NODE} did not come back Synced in a cluster of {len(NODES)} within {timeout} s")


def restart_node() -> None:
    node_sh("galera-node stop")
    node_sh("galera-node start")
    wait_synced()


class Load:
    """The writer rewrites one 64 KiB row every LOAD_INTERVAL s (no data growth), while galera-node3's
    gcache filesystem keeps more than LOAD_FLOOR free, so that even a guard that failed cannot crash it."""

    def __init__(self):
        self.conn = admin_connection(WRITER)
        with self.conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS gcache_load")
            cur.execute("CREATE TABLE IF NOT EXISTS gcache_load.t (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB")
            cur.execute("REPLACE INTO gcache_load.t VALUES (1, '')")
        self.stop_flag = threading.Event()
        self.written = 0
        self.thread = None

    def _run(self):
        n = 0
        while not self.stop_flag.is_set() and free_bytes() > LOAD_FLOOR:
            n += 1
            with self.conn.cursor() as cur:
                cur.execute("UPDATE gcache_load.t SET b = REPEAT(CHAR(65 + %s), %s) WHERE id = 1", (n % 26, ROW))
            self.written += 2 * ROW
            self.stop_flag.wait(LOAD_INTERVAL)

    def start(self):
        self.stop_flag.clear()
        self.written = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
            self.thread = None

    def close(self):
        self.stop()
        with self.conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS gcache_load")
        self.conn.close()


@pytest.fixture(scope="module")
def small_gcache():
    """galera-node3 with gcache.dir on the small filesystem; its default gcache back afterwards."""
    node_sh(f"chown mysql:mysql {GCACHE_DIR} && printf '%s\\n' '[mariadb]' "
            f"'wsrep_provider_options = \"gcache.dir={GCACHE_DIR};gcache.size=16M;gcache.page_size=1M\"' > {CNF}")
    load = None
    try:
        restart_node()
        load = Load()
        print(f"\n{GCACHE_DIR}: {free_bytes() / MIB:.1f} MiB free with gcache there")
        yield load
    finally:
        if load is not None:
            load.close()
        node_sh(f"rm -f {CNF}")
        restart_node()
        node_sh(f"find {GCACHE_DIR} -mindepth 1 -delete; rm -rf {BACKUP_DIR}", check=False)


def whole() -> None:
    conns = {n: admin_connection(n) for n in NODES}
    try:
        assert {n: int(one(c, "SELECT @@wsrep_desync")[0]) for n, c in conns.items()} == {n: 0 for n in NODES}
        assert one(conns[NODE], "SHOW STATUS LIKE 'wsrep_local_state_comment'")[1] == "Synced"
        assert one(conns[WRITER], "SELECT COUNT(*) FROM dbtools_galera.desync_lease")[0] == 0
    finally:
        for conn in conns.values():
            conn.close()


def backup(request, *extra):
    return run_playbook(request, "dbtools.galera.backup", "-e", f"galera_backup_node={NODE}",
                        "-e", "galera_backup_sample_seconds=2", "-e", f"galera_backup_dir={BACKUP_DIR}", *extra)


def test_preflight_refuses_when_the_write_rate_cannot_fit_in_the_gcache_filesystem(request, small_gcache):
    load = small_gcache
    load.start()
    try:
        # The role's default galera_backup_max_duration (the scenarios' inventory sets a shorter one).
        defaults = backup(request, "-e", "galera_backup_max_duration=21600")
        reserve = backup(request, "-e", f"galera_backup_min_free_bytes={8 * MIB}",
                         "-e", "galera_backup_max_duration=21600")
    finally:
        load.stop()
    print(f"\nwith the defaults: {defaults.output[-1500:]}\nwith an 8 MiB reserve: {reserve.output[-1500:]}")
    # The defaults act: a 1 GiB reserve does not fit on a 64 MiB filesystem.
    assert defaults.returncode != 0
    assert f"{GCACHE_DIR} (gcache.dir, where a desynced node's gcache pages go) is on a filesystem with" \
        in defaults.output, defaults.output[-3000:]
    assert "under the watchdog's reserve of 1.0 GiB" in defaults.output
    assert "Nothing was changed." in defaults.output
    # Above a reserve that fits, the measured rate x galera_backup_max_duration (6 h) cannot.
    assert reserve.returncode != 0
    text = reserve.output
    for words in ("the cluster writes ", "/s; desynced for up to galera_backup_max_duration=21600 s",
                  f"past gcache (16.0 MiB) in {GCACHE_DIR}", "above the watchdog's reserve): room for about",
                  "Lower galera_backup_max_duration to what the backup needs", "Nothing was changed."):
        assert words in text, text[-3000:]
    seconds = int(text.split("room for about ")[1].split()[0])
    # ~40 MiB (24 MiB free above the 8 MiB reserve, plus the 16 MiB ring) at about 2 MiB/s.
    assert 5 <= seconds <= 120, f"room for {seconds} s: the measured rate is off"
    assert node_sh(f"ls -A {BACKUP_DIR} 2>/dev/null", check=False).stdout.strip() == ""
    whole()


def test_the_free_space_guard_stops_the_backup_before_gcache_fills_its_filesystem(request, small_gcache):
    load = small_gcache
    start_line = int(node_sh(f"cat {WATCHDOG_LOG} 2>/dev/null | wc -l").stdout) + 1
    # The guard trips once the ring buffer is full and ~12 MiB of pages were written. What is free now depends
    # on the write-sets this node received at its restart (IST with the certification index's preload).
    base = free_bytes()
    reserve = base - 12 * MIB
    assert reserve >= 10 * MIB, f"only {base} bytes free on {GCACHE_DIR} before the test: too little to measure"
    # No writes at pre-flight (600 s of a stray write-set fit): the backup starts, the writes come while it runs.
    cmd = playbook_command(request, "dbtools.galera.backup", "-e", f"galera_backup_node={NODE}",
                           "-e", "galera_backup_sample_seconds=0.5", "-e", f"galera_backup_dir={BACKUP_DIR}",
                           "-e", f"galera_backup_min_free_bytes={reserve}", "-e", "galera_backup_max_duration=600",
                           "-e", '{"galera_backup_extra_args": ["--throttle=1"]}')
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=playbook_env())
    conn = admin_connection(NODE)
    release = threading.Event()
    frozen = {}

    def stall():
        # The applier stalls as under a slow disk: nothing is applied, every write-set stays in gcache.
        started = time.monotonic()
        with freeze_applier.frozen(NODE) as tids:
            release.wait(240)
        frozen.update(threads=tids, seconds=round(time.monotonic() - started, 1))

    staller = threading.Thread(target=stall, daemon=True)
    lowest, tripped = free_bytes(), None
    try:
        deadline = time.monotonic() + 300
        while int(one(conn, "SELECT @@wsrep_desync")[0]) != 1:
            assert proc.poll() is None, "the backup ended before the desync: " + proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "galera-node3 was never desynced"
            time.sleep(0.1)
        # A backup slower than the writes: the tool is paused, so it cannot end before the guard acts.
        while node_sh("pkill -STOP -x mariabackup", check=False).returncode != 0:
            assert proc.poll() is None, "the backup ended before its tool ran: " + proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "mariabackup never ran"
            time.sleep(0.1)
        load.start()
        time.sleep(0.5)
        staller.start()
        deadline = time.monotonic() + 180  # the ring buffer fills first, then ~12 MiB of pages
        while time.monotonic() < deadline and proc.poll() is None:
            lowest = min(lowest, free_bytes())
            log = node_sh(f"tail -n +{start_line} {WATCHDOG_LOG}", check=False).stdout
            if "guard: the filesystem of gcache.dir" in log:
                tripped = time.monotonic()
                break
            time.sleep(0.5)
    finally:
        load.stop()
        lowest = min(lowest, free_bytes())
        node_sh("pkill -CONT -x mariabackup", check=False)
        release.set()
        if staller.ident is not None:
            staller.join(timeout=60)
        conn.close()
    out, _err = proc.communicate(timeout=900)
    output = " ".join(out.split())
    pages = node_sh(f"ls {GCACHE_DIR}").stdout.split()
    print(f"\nwritten {load.written / MIB:.1f} MiB; free {base / MIB:.1f} MiB at the start, lowest {lowest / MIB:.1f} MiB "
          f"(reserve {reserve / MIB:.1f} MiB);"
          f" applier stalled {frozen}; playbook rc {proc.returncode}; {GCACHE_DIR} now: {pages}")
    assert tripped is not None, "the free-space guard did not trip: " + output[-3000:]
    assert proc.returncode != 0
    assert f"The backup of {NODE} failed" in output, output[-3000:]
    assert "guard: the filesystem of gcache.dir" in output, output[-3000:]
    assert f"under the guard of {reserve}" in output
    assert "The node was resynced (Synced, wsrep_desync OFF); this run's partial backup was discarded" in output
    # It acted in time: the filesystem never got near full, and the server is up and Synced.
    assert lowest > LOAD_FLOOR, f"the gcache filesystem fell to {lowest} bytes free: the guard acted late"
    assert node_sh("pgrep -x mariadbd", check=False).returncode == 0
    with admin_connection(WRITER) as admin:
        assert one(admin, "SELECT COUNT(*) FROM dbtools_galera.desync_events WHERE node = %s AND event = 'guard' "
                          "AND detail LIKE %s", (NODE, "%gcache.dir%"))[0] >= 1
    whole()
