"""scripts/demo_summary.py: the demo's short report, read from a saved log of a real demo run."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo_converge.log")

_spec = importlib.util.spec_from_file_location("demo_summary", os.path.join(ROOT, "scripts", "demo_summary.py"))
demo_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_summary)


@pytest.fixture(scope="module")
def log_text() -> str:
    with open(LOG, encoding="utf-8") as stream:
        return stream.read()


def test_the_figures_of_a_real_demo_run(log_text):
    s = demo_summary.summary(log_text)
    assert s["id"] == "dbtools_galera-node3_20261202T015922Z-2652b530"
    assert (s["node"], s["type"], s["method"], s["size"], s["verify"]) == \
        ("galera-node3", "full", "mariabackup", "18.60 MB", "prepare")
    assert s["fc"] == "0" and not s["encrypted"]
    # wsrep_desync=ON by 0:00:50.965 (end of the desync task), Synced by 0:01:40.106 (end of the resync task).
    assert s["desynced_seconds"] == pytest.approx(49.1)
    # sysbench started at 0:00:10.183: its intervals ending at 2..40 s fell before the desync, 44..88 s during it.
    assert round(s["tps_before"]) == 298 and round(s["tps_during"]) == 161 and s["tps_percent"] == 54


def test_the_rendered_summary(log_text):
    text = demo_summary.render(demo_summary.summary(log_text))
    assert "dbtools_galera-node3_20261202T015922Z-2652b530" in text
    assert "full mariabackup, 18.60 MB, verified by prepare" in text
    assert "49.1 s" in text and "0 messages" in text and "54 %" in text
    assert "docker exec galera-node3 cat /var/backups/galera/dbtools_galera-node3_20261202T015922Z-2652b530/" in text


def test_colours_do_not_matter(log_text):
    coloured = re.sub(r"^(TASK|ok:)", "\x1b[0;32m\\1", log_text, flags=re.M).replace("\n", "\x1b[0m\n")
    assert demo_summary.summary(coloured) == demo_summary.summary(log_text)


def test_an_encrypted_incremental_backup(log_text):
    text = log_text.replace("(full, mariabackup, 18.60\n        MB, verified",
                            "(incremental on dbtools_x_1, mariabackup, 18.60\n        MB, encrypted, verified")
    s = demo_summary.summary(text)
    assert s["type"] == "incremental" and s["encrypted"]


@pytest.mark.parametrize("cut, why", [
    (lambda t: t.replace("Report the backup", "Report the choice again"), "no report task"),
    (lambda t: t.replace("ok: [galera-node3] =>\n    msg: 'Backup", "fatal: [galera-node3]: FAILED! =>\n    msg: 'Backup"),
     "the report failed"),
    (lambda t: t.split("TASK [dbtools.galera.galera_backup : Drain the receive queue")[0], "the log ends mid-backup"),
    (lambda t: "", "an empty log"),
])
def test_no_finished_backup_is_said_so(log_text, cut, why):
    with pytest.raises(demo_summary.NoBackup):
        demo_summary.summary(cut(log_text))


def test_without_timestamps_the_times_are_unknown_not_made_up(log_text):
    plain = "\n".join(line for line in log_text.splitlines() if not demo_summary.STAMP.match(line))
    s = demo_summary.summary(plain)
    assert s["desynced_seconds"] is None and s["tps_percent"] is None
    text = demo_summary.render(s)
    assert "unknown" in text and "n/a" in text


def test_main_exit_status(tmp_path, capsys):
    assert demo_summary.main(["demo_summary.py", LOG]) == 0
    assert "18.60 MB" in capsys.readouterr().out
    empty = tmp_path / "demo.log"
    empty.write_text("PLAY RECAP\n", encoding="utf-8")
    assert demo_summary.main(["demo_summary.py", str(empty)]) == 1
    assert "no finished backup" in capsys.readouterr().err


def test_the_tasks_it_reads_still_exist():
    """The parser finds the figures by task name: a renamed task in the role or the converge breaks it."""
    with open(os.path.join(ROOT, "roles", "galera_backup", "tasks", "backup.yml"), encoding="utf-8") as stream:
        role = stream.read()
    with open(os.path.join(ROOT, "extensions", "molecule", "default", "converge.yml"), encoding="utf-8") as stream:
        converge = stream.read()
    for name in (demo_summary.DESYNC_TASK, demo_summary.RESYNC_TASK, demo_summary.REPORT_TASK):
        assert f"- name: {name}\n" in role, name
    for name in (demo_summary.SYSBENCH_TASK, demo_summary.RATE_TASK):
        assert f"- name: {name}\n" in converge, name
