"""Invariant 7 with every secret in play: a database password, the backup encryption key and an S3
access/secret key pair, through a -vvv run of the backup role that encrypts and copies to S3. None
may appear in the output, in any result the role registered, in any process's argv (sampled every
50 ms) or in any file left on the backed-up node."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import threading

from conftest import admin_connection, grep_node, run_playbook

testinfra_hosts = ["galera"]
HERE = os.path.dirname(os.path.abspath(__file__))
NODE = "galera-node3"
SEARCHED = ["/var/backups/galera-secrets", "/var/log/dbtools-galera", "/run/dbtools-galera", "/tmp", "/var/tmp",
            "/root", "/var/log/mysql", "/var/backups/.dbtools-galera-verify"]


def all_command_lines() -> list:
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    lines.append(handle.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines


def test_no_secret_in_output_registered_results_argv_or_files(request, tmp_path):
    store = json.load(open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "store", "store.json"),
                           encoding="utf-8"))
    password = "Pw-" + os.urandom(12).hex() + "#:\"'"
    admin = admin_connection("galera-node1")
    with admin.cursor() as cur:
        cur.execute("CREATE OR REPLACE USER 'dbtools_secret'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute("CREATE OR REPLACE USER 'dbtools_secret'@'localhost' IDENTIFIED BY %s", (password,))
        cur.execute("GRANT ALL ON *.* TO 'dbtools_secret'@'%'")
        cur.execute("GRANT ALL ON *.* TO 'dbtools_secret'@'localhost'")
    key = "Key-" + os.urandom(16).hex()
    extra = tmp_path / "secrets.json"
    registered = tmp_path / "registered"
    extra.write_text(json.dumps({"galera_login_user": "dbtools_secret", "galera_login_password": password,
                                 "galera_test_backup_key": key, "galera_test_registered": str(registered)}))
    extra.chmod(0o600)
    secrets = [password, key, store["s3"]["secret_key"]]
    seen, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            seen.extend(line for line in all_command_lines() if any(s in line for s in secrets))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # ansible-core 2.21 leaves the modules' arguments (`invocation`) out of the results unless
        # asked: ask, so the -vvv output holds them (the login user, the no_log ones masked) on every version.
        run = run_playbook(request, os.path.join(HERE, "..", "secrets.yml"), "-vvv", "-e", f"@{extra}",
                           "-e", "ansible_inject_invocation=true", timeout=1200)
    finally:
        stop.set()
        sampler.join()
        with admin.cursor() as cur:
            cur.execute("DROP USER IF EXISTS 'dbtools_secret'@'%'")
            cur.execute("DROP USER IF EXISTS 'dbtools_secret'@'localhost'")
        admin.close()
    assert run.returncode == 0, run.output[-4000:]
    assert "dbtools_secret" in run.output, "the run did not use the password login"
    assert "galera-secrets" in run.output and "s3://" in run.output, "the run did not copy to S3"
    for name, secret in zip(("the password", "the encryption key", "the S3 secret key"), secrets):
        assert secret not in run.output, f"{name} is in the -vvv output"
    files = glob.glob(f"{registered}.*.json")
    assert len(files) == 3, files
    for path in files:
        text = open(path, encoding="utf-8").read()
        assert "_galera_backup_copied" in text or "galera-node3" not in path
        for name, secret in zip(("the password", "the encryption key", "the S3 secret key"), secrets):
            assert secret not in text, f"{name} is in a registered result ({path})"
    assert not seen, f"a secret was in a process's argv: {seen[:3]}"
    hits = grep_node(NODE, secrets, SEARCHED)
    assert not hits, f"a secret is in files on {NODE}: {hits}"
    subprocess.run(["docker", "exec", NODE, "rm", "-rf", "/var/backups/galera-secrets"], check=True)
    print(f"\n-vvv encrypted backup copied to S3 with a password login: {len(run.output)} characters of output, "
          f"{len(files)} registered-result files, argv sampled every 50 ms, {len(SEARCHED)} node paths: no secret")
