# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pre-flight's gcache check (issue 16 item 7): the measured write rate x galera_backup_max_duration must fit
where gcache spills, above the watchdog's reserve, else the run is refused with the figures."""

from __future__ import annotations

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _backup_job, _paths, _watchdog

MIB = 1 << 20
GIB = 1 << 30


def estimate(rate, free, size=4 * MIB, max_duration=21600, reserve=GIB, total=48 * MIB):
    gcache = dict(write_bytes_per_second=rate, size_bytes=size, dir_free_bytes=free, dir_total_bytes=total)
    return _backup_job.gcache_estimate(gcache, "/var/lib/gcache-small", max_duration, reserve)


def test_the_default_reserve_refuses_a_filesystem_smaller_than_it_even_without_writes():
    """1 GiB by default: on a 44 MiB filesystem the watchdog would stop the backup at its first look."""
    for rate in (0, 2 * MIB):
        check = estimate(rate, 44 * MIB)
        assert check["refuse"], check
        assert "44.0 MiB free, under the watchdog's reserve of 1.0 GiB" in check["text"]
        assert "galera_backup_min_free_bytes" in check["text"] and "/var/lib/gcache-small" in check["text"]


def test_a_rate_that_cannot_fit_for_max_duration_is_refused_with_the_figures():
    # 2 MiB/s for 6 h is 42 GiB; above an 8 MiB reserve 36 MiB are free, plus the 4 MiB ring buffer: 20 s.
    check = estimate(2 * MIB, 44 * MIB, reserve=8 * MIB)
    assert check["refuse"]
    assert check["seconds"] == 20
    text = check["text"]
    for words in ("the cluster writes 2.0 MiB/s", "galera_backup_max_duration=21600 s",
                  "may have to keep 42.2 GiB of write-sets", "past gcache (4.0 MiB) in /var/lib/gcache-small",
                  "44.0 MiB free (36.0 MiB above the watchdog's reserve)", "room for about 20 s",
                  "Lower galera_backup_max_duration to what the backup needs (at most 20)"):
        assert words in text, text


@pytest.mark.parametrize("max_duration, refused", [(20, False), (21, True)])
def test_the_limit_is_exactly_what_fits(max_duration, refused):
    assert estimate(2 * MIB, 44 * MIB, reserve=8 * MIB, max_duration=max_duration)["refuse"] is refused


def test_what_fits_in_the_ring_buffer_alone_passes_and_says_how_long_it_holds():
    check = estimate(1000, 44 * MIB, reserve=8 * MIB, max_duration=3600)  # 3.6 MB in 1 h, under the 4 MiB ring
    assert not check["refuse"]
    assert "can hold about 41943 s of a stalled applier (galera_backup_max_duration=3600 s)" in check["text"]


def test_no_writes_and_room_above_the_reserve_passes():
    check = estimate(0, 44 * MIB, reserve=8 * MIB)
    assert not check["refuse"] and check["text"].startswith("no cluster writes were measured")


def test_without_the_module_s_figure_the_directory_is_measured_here(tmp_path):
    """Pre-flight runs on the node: when galera_info gave no free-space figure it measures gcache.dir itself."""
    gcache = dict(write_bytes_per_second=1, size_bytes=4 * MIB, dir_free_bytes=None)
    check = _backup_job.gcache_estimate(gcache, str(tmp_path), 60, 0)
    assert check["free"] == _paths.free_bytes(str(tmp_path)) and not check["refuse"]


def test_the_watchdog_log_rotates_itself(tmp_path, monkeypatch):
    """The watchdog's log never outgrows twice LOG_MAX_BYTES: past it, it becomes watchdog.log.1."""
    log = tmp_path / "log" / "watchdog.log"
    monkeypatch.setattr(_watchdog, "LOG_FILE", str(log))
    monkeypatch.setattr(_watchdog, "LOG_MAX_BYTES", 1000)
    dog = _watchdog.Watchdog.__new__(_watchdog.Watchdog)
    dog.node_name, dog.owner = "galera-node3", "galera_backup:test"
    for i in range(100):
        dog.log(f"line {i} " + "x" * 40)
    rotated = log.parent / "watchdog.log.1"
    assert rotated.exists() and log.exists()
    assert log.stat().st_size < 1000 + 200 and rotated.stat().st_size < 1000 + 200
    assert "line 99 " in log.read_text(encoding="utf-8")
    assert sorted(p.name for p in log.parent.iterdir()) == ["watchdog.log", "watchdog.log.1"]
    assert _watchdog.rotate_log(str(tmp_path / "none.log"), 1) is False
