# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pure parts of the backup run: the xbstream reader, the positions the tools record, pipelines."""

from __future__ import annotations

import errno
import io
import struct
import sys
import threading

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _backup_runner, _tools, _xbstream
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError


def chunk(path: str, payload: bytes) -> bytes:
    name = path.encode()
    return (_xbstream.MAGIC + struct.pack("<BBI", 0, ord("P"), len(name)) + name
            + struct.pack("<QQ", len(payload), 0) + b"\0\0\0\0" + payload)


def eof(path: str) -> bytes:
    name = path.encode()
    return _xbstream.MAGIC + struct.pack("<BBI", 0, ord("E"), len(name)) + name


def test_xbstream_copied_unchanged_with_metadata_kept():
    stream = (chunk("ibdata1", b"x" * 5000) + eof("ibdata1") + chunk("xtrabackup_galera_info", b"u:42\n")
              + chunk("db/xtrabackup_info", b"not the top-level one") + eof("xtrabackup_galera_info"))
    out = io.BytesIO()
    result = _xbstream.copy(io.BytesIO(stream), out)
    assert out.getvalue() == stream
    assert result["files"] == {"xtrabackup_galera_info": b"u:42\n"}
    assert result["bytes"] == len(stream) and result["chunks"] == 5


@pytest.mark.parametrize("data, text", [
    (b"", "empty xbstream"),
    (b"NOTXBST!" + b"\0" * 20, "not an xbstream"),
    (chunk("ibdata1", b"x" * 100)[:-10], "ends inside"),
])
def test_broken_xbstreams_fail(data, text):
    with pytest.raises(GaleraError, match=text):
        _xbstream.copy(io.BytesIO(data), io.BytesIO())


def test_physical_position(tmp_path):
    (tmp_path / "mariadb_backup_galera_info").write_text("0a9b-uuid:4711\n")
    (tmp_path / "mariadb_backup_checkpoints").write_text("backup_type = incremental\nfrom_lsn = 10\nto_lsn = 99\n")
    (tmp_path / "mariadb_backup_binlog_info").write_text("mysql-bin.000003\t1234\t0-1-99\n")
    pos = _backup_runner.physical_position(str(tmp_path), incremental_lsn=10)
    assert pos == dict(galera_info="0a9b-uuid:4711", to_lsn=99, from_lsn=10,
                       binlog=dict(file="mysql-bin.000003", position=1234, gtid="0-1-99"))
    with pytest.raises(GaleraError, match="not at its parent's 11"):
        _backup_runner.physical_position(str(tmp_path), incremental_lsn=11)


def test_dump_position():
    head = (b"-- MariaDB dump\n--\n-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000002', MASTER_LOG_POS=42;\n"
            b"-- SET GLOBAL gtid_slave_pos='0-1-7';\n")
    assert _backup_runner.dump_position(head)["binlog"] == dict(file="mysql-bin.000002", position=42, gtid="0-1-7")
    assert _backup_runner.dump_position(b"-- nothing\n")["binlog"] is None


def test_mydumper_position(tmp_path):
    meta = tmp_path / "metadata"
    meta.write_text("Started dump at: 2026\nSHOW MASTER STATUS:\n\tLog: mysql-bin.000001\n\tPos: 77\n\tGTID:0-1-3\n"
                    "Finished dump at: 2026\n")
    expected = dict(file="mysql-bin.000001", position=77, gtid="0-1-3")
    assert _backup_runner.mydumper_position(str(meta))["binlog"] == expected
    meta.write_text("Started dump at: 2026\n")
    with pytest.raises(GaleraError, match="incomplete"):
        _backup_runner.mydumper_position(str(meta))


def test_pipeline_reports_the_failing_stage_not_the_broken_pipe(tmp_path):
    log = str(tmp_path / "log")
    ok = _tools.Pipeline([["printf", "a\\nb\\n"], ["wc", "-l"]], log, stdout=str(tmp_path / "out"))
    ok.wait("counting")
    assert (tmp_path / "out").read_text().strip() == "2"
    bad = _tools.Pipeline([["yes"], ["sh", "-c", "head -c 10 >/dev/null; echo boom >&2; exit 3"]], log)
    with pytest.raises(GaleraError, match="sh exited with 3: .*boom"):
        bad.wait("testing")


def test_tee_keeps_head_and_tail_of_a_dump():
    data = b"-- head\n" + b"x" * (3 << 20) + b"\n-- Dump completed on 2026\n"
    tee = _backup_runner.Tee("dump")
    out = io.BytesIO()
    out.close = lambda: None  # keep the buffer readable after the tee closes it
    tee.run(io.BytesIO(data), out)
    assert tee.error is None and out.getvalue() == data
    assert tee.head.startswith(b"-- head") and len(tee.head) == 1 << 20
    assert tee.tail.endswith(b"-- Dump completed on 2026\n")


def test_check_stages_test_an_encrypted_stream_and_catch_a_wrong_key(tmp_path):
    import subprocess  # noqa: PLC0415

    from ansible_collections.dbtools.galera.plugins.module_utils import _crypto, _restore  # noqa: PLC0415

    key = tmp_path / "key"
    _crypto.write_key_file(str(key), b"unit-test-key")
    plain = subprocess.run(["zstd", "-q", "-c"], input=b"x" * 100000, capture_output=True, check=True).stdout
    stream = tmp_path / "backup.xbstream.zst.enc"
    stream.write_bytes(subprocess.run(_crypto.encrypt_argv("openssl", str(key)), input=plain, capture_output=True,
                                      check=True).stdout)
    log = str(tmp_path / "log")
    _tools.Pipeline(_restore.check_stages(str(stream), str(key)), log, stdin=str(stream)).wait("checking")
    wrong = tmp_path / "wrong"
    _crypto.write_key_file(str(wrong), b"another-key")
    with pytest.raises(GaleraError, match="zstd exited with 1"):
        _tools.Pipeline(_restore.check_stages(str(stream), str(wrong)), log, stdin=str(stream)).wait("checking")


def test_a_destination_that_fills_up_ends_the_pipeline_instead_of_hanging(tmp_path):
    """The sink fails (ENOSPC) while the tool still writes: the run must stop the compressor and the tool
    and report the error, not wait forever for a copier blocked on a pipe nobody reads (a real hang on a
    full backup directory: the node stayed desynced until max_duration)."""
    class FullSink(_backup_runner.Sink):
        def write(self, data: bytes) -> None:
            if self.bytes > (1 << 20):
                raise OSError(errno.ENOSPC, "No space left on device")
            super().write(data)

    partial = tmp_path / "b.partial"
    partial.mkdir()
    run = dict(partial=str(partial), run_id="r1", id="x_y_z-r1", tool="mysqldump")
    settings = dict(nice=0, ionice_class="none", ionice_level=7, compress_level=1, threads=1)
    runner = _backup_runner.Runner(run, settings, {}, None, None, str(tmp_path / "client.cnf"), None)
    runner._sink = lambda rel, mac, record: FullSink(str(partial / rel), mac)  # pylint: disable=protected-access
    # An incompressible endless tool output (os.urandom), as a big table's dump would be.
    tool = [sys.executable, "-c", "import os, sys\nwhile True: sys.stdout.buffer.write(os.urandom(1 << 16))"]
    outcome = {}

    def go():
        try:
            runner._stream(tool, "dump", "backup.sql")  # pylint: disable=protected-access
        except BaseException as exc:  # pylint: disable=broad-except
            outcome["error"] = exc

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(30)
    alive = worker.is_alive()
    for pipeline in runner.pipelines:
        pipeline.kill()
    assert not alive, "the run hung on a full destination"
    assert isinstance(outcome.get("error"), OSError) and outcome["error"].errno == errno.ENOSPC


def test_a_dead_runs_directory_is_swept_by_the_next_runs_start(tmp_path):
    """Soak seed soak-20261202, cycles 14-19: the controller was killed while its runner verified; the runner ended,
    and its run directory (state.json, runner.pid) was never swept by the later runs on that node, because the
    runner's state file did not name the cluster and the sweep leaves what it cannot prove is this cluster's."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from ansible_collections.dbtools.galera.plugins.module_utils import _backup_job, _proc  # noqa: PLC0415

    base, backups, verify = tmp_path / "run", tmp_path / "backups", tmp_path / "verify"
    for path in (base, backups, verify):
        path.mkdir()
    cluster = dict(name="prod", size=3, state_uuid="0b1c2d3e-ee10-11f1-badf-06dfeb2593b0")
    dead = _backup_job.run_paths(str(backups), "prod_n2_20261202T053516Z-9843f158", "9843f158", str(base), str(verify))
    dead.update(cluster=cluster)
    os.mkdir(dead["run_dir"])
    child = subprocess.Popen(["true"])  # pylint: disable=consider-using-with
    child.wait()
    runner = _backup_runner.Runner(dead, {}, {}, None, None, dead["cnf"], None)
    runner.save(process=dict(_proc.identity(), pid=child.pid), step="done", done=True, result="ok")
    old = os.stat(dead["run_dir"]).st_mtime - 120
    os.utime(dead["run_dir"], (old, old))
    other = dict(cluster, state_uuid="ffffffff-ee10-11f1-badf-06dfeb2593b0")
    new = _backup_job.run_paths(str(backups), "prod_n2_20261202T060000Z-0a1b2c3d", "0a1b2c3d", str(base), str(verify))
    assert _backup_job.sweep(dict(new, cluster=other, run_base=str(base)), dict(backup=dict(lease_ttl=30)))["run_dirs"] == []
    assert os.path.isdir(dead["run_dir"])  # another cluster's run (same name, other state uuid) is left alone
    swept = _backup_job.sweep(dict(new, cluster=cluster, run_base=str(base)), dict(backup=dict(lease_ttl=30)))
    assert swept["run_dirs"] == [dead["run_dir"]] and not os.path.exists(dead["run_dir"])


def test_a_tool_that_fails_after_the_watchdogs_guard_reports_the_guard_first(tmp_path):
    """CI (faults, test_gcache_space): the watchdog's free-space guard tripped while mariabackup was paused in its
    login; resumed, the tool failed ("Lost connection") before the watchdog's SIGTERM reached the runner, and the
    run reported only the tool's error, not the guard that ended the desync."""
    import json  # noqa: PLC0415

    state = tmp_path / "watchdog.json"
    run = dict(run_id="r", id="c_n_x-r", partial=str(tmp_path / "p"), cluster=dict(name="c"))
    runner = _backup_runner.Runner(run, {}, {}, None, None, "", str(state))
    tool = GaleraError("mariabackup: nice exited with 1: Lost connection to server at 'sending authentication'")
    assert runner.failure_text(tool) == tool.msg  # no watchdog state: the tool's error as it is
    state.write_text(json.dumps(dict(guard="the filesystem of gcache.dir /var/lib/mysql has 30 MiB free")))
    assert runner.failure_text(tool) == ("the watchdog ended the desync: guard: the filesystem of gcache.dir "
                                         f"/var/lib/mysql has 30 MiB free ({tool.msg})")
    # A message that already names the guard (the runner's own check after the tool) is not repeated.
    own = GaleraError("the watchdog ended the desync during the backup: guard: the filesystem of gcache.dir "
                      "/var/lib/mysql has 30 MiB free. The node was not protected for the whole run")
    assert runner.failure_text(own) == own.msg
    runner.stopping = "the run was stopped (SIGTERM)"
    assert runner.failure_text(tool) == f"the run was stopped (SIGTERM) ({tool.msg})"
