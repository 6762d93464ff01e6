"""The local Docker cluster of the Molecule scenarios, seen from the host: container addresses
and the test administrator's SQL connection. Shared by the verifiers and the benchmark."""

from __future__ import annotations

import json
import subprocess

import pymysql

NETWORK = "dbtools-galera"
ADMIN_USER = "dbtools_admin"
ADMIN_PASSWORD = "dbtools-test-admin"  # the test-only network administrator made by resources/prepare.yml


def container_ip(name: str) -> str:
    out = subprocess.run(["docker", "inspect", name], check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


def admin_connection(name: str):
    """A PyMySQL connection from the host to a node, as the test administrator."""
    return pymysql.connect(host=container_ip(name), user=ADMIN_USER, password=ADMIN_PASSWORD,
                           autocommit=True, connect_timeout=10)
