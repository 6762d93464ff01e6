# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The least-privilege account (tests/tools/grants.py) and its documentation (docs/grants.md).

The statements docs/grants.md shows for each server version are exactly those the Molecule prepare
step applies (``grants.py sql``), so what the scenarios prove is what an operator copies.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("grants_tool", ROOT / "tests" / "tools" / "grants.py")
grants = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = grants
SPEC.loader.exec_module(grants)

DOC = ROOT / "docs" / "grants.md"
VERSIONS = [(10, 11), (11, 8)]


@pytest.mark.parametrize("text, version", [
    ("10.11.19-MariaDB-0+deb12u1", (10, 11)),
    ("11.8.3-MariaDB-1 from Debian", (11, 8)),
    ("11.8", (11, 8)),
    ("8.0.36-28.1", (8, 0)),
])
def test_parse_version(text, version):
    assert grants.parse_version(text) == version


@pytest.mark.parametrize("text", ["", "MariaDB", "v10.11", "$(id)"])
def test_parse_version_refuses_what_is_not_a_version(text):
    with pytest.raises(ValueError):
        grants.parse_version(text)


@pytest.mark.parametrize("text, host", [
    ("localhost", "localhost"),
    ("10.0.0.%", "10.0.0.%"),
    ("172.27.0.3/16", "172.27.0.0/255.255.0.0"),
    ("10.0.0.0/24", "10.0.0.0/255.255.255.0"),
    ("192.168.7.9/32", "192.168.7.9/255.255.255.255"),
    ("db1.example.com", "db1.example.com"),
])
def test_host_part(text, host):
    assert grants.host_part(text) == host


@pytest.mark.parametrize("version", VERSIONS)
def test_every_account_gets_the_same_grants_and_only_them(version):
    statements = grants.account_sql(version, "dbtools", ("localhost", "10.0.0.%"), "pw")
    local = [s.replace("'localhost'", "HOST") for s in statements if "'localhost'" in s]
    network = [s.replace("'10.0.0.%'", "HOST") for s in statements if "'10.0.0.%'" in s]
    assert local == network
    # Idempotent: the password is set and the earlier grants revoked before the grants are given.
    kinds = [s.split()[0] for s in local]
    assert kinds[:3] == ["CREATE", "ALTER", "REVOKE"] and set(kinds[3:]) == {"GRANT"}
    assert not any("ALL PRIVILEGES ON" in s or "GRANT OPTION" in s for s in local if s.startswith("GRANT"))


@pytest.mark.parametrize("version", VERSIONS)
def test_the_account_holds_what_was_measured(version):
    """The privileges each operation was shown to need (docs/grants.md, measured with grants.py measure)."""
    listed = set(grants.account_list(version))
    for needed in ("SUPER ON *.*", "RELOAD ON *.*", "PROCESS ON *.*", "BINLOG MONITOR ON *.*", "SELECT ON *.*",
                   "INSERT ON dbtools_galera.*", "UPDATE ON dbtools_galera.*", "DELETE ON dbtools_galera.*",
                   "CREATE ON dbtools_galera.*"):
        assert needed in listed, needed
    for never in ("ALL PRIVILEGES", "FILE", "SHUTDOWN", "CREATE USER", "GRANT OPTION", "DROP", "ALTER"):
        assert not any(g.startswith(never + " ON") for g in listed), never


@pytest.mark.parametrize("without, gone", [
    (("SUPER", "*.*"), "SUPER"),
    (("INSERT", "`dbtools_galera`.*"), "INSERT"),
    (("RELOAD", "*.*"), "RELOAD"),
])
def test_an_account_without_one_grant(without, gone):
    full = grants.account_sql((10, 11), "probe", ("localhost",), "pw")
    less = grants.account_sql((10, 11), "probe", ("localhost",), "pw", without=without)
    changed = [(a, b) for a, b in zip(full, less) if a != b]
    assert len(full) == len(less) and len(changed) == 1
    before, after = changed[0]
    assert f" ON {without[1]} " in before and gone in before.split(" ON ")[0]
    assert gone not in after.split(" ON ")[0]


@pytest.mark.parametrize("user, password", [
    ("x'; DROP USER root; --", "p'w"),
    ("dbtools", "back\\slash' OR '1'='1"),
    ("$(id)", "`uname`\n"),
])
def test_hostile_names_stay_inside_their_string(user, password):
    statements = grants.account_sql((10, 11), user, ("localhost",), password)
    for statement in statements:
        # Outside the quoted strings only keywords, identifiers and punctuation remain.
        bare = re.sub(r"'(?:[^'\\]|\\.)*'", "''", statement)
        assert "DROP" not in bare and "$(" not in bare and "`uname`" not in bare and "\n" not in bare.rstrip(";")
        assert bare.count(";") == 1 and bare.endswith(";")


@pytest.mark.parametrize("error, remaining, expected", [
    ("Access denied; you need (at least one of) the SUPER privilege(s) for this operation",
     ["SUPER ON *.*", "RELOAD ON *.*"], "SUPER ON *.*"),
    ("failed to execute query SHOW MASTER STATUS: Access denied; you need (at least one of) the SUPER, BINLOG "
     "MONITOR privilege(s) for this operation", ["SUPER ON *.*", "BINLOG MONITOR ON *.*"], "BINLOG MONITOR ON *.*"),
    ("[00] 2026-12-02 01:18:42 Error: missing required privilege RELOAD on *.*",
     ["PROCESS ON *.*", "RELOAD ON *.*"], "RELOAD ON *.*"),
    ("INSERT command denied to user 'probe'@'localhost' for table `dbtools_galera`.`desync_lease`",
     ["INSERT ON *.*", "INSERT ON dbtools_galera.*"], "INSERT ON dbtools_galera.*"),
    ("Got error: 1044: Access denied for user 'probe'@'localhost' to database 'x' when using LOCK TABLES",
     ["SELECT ON *.*", "LOCK TABLES ON *.*"], "LOCK TABLES ON *.*"),
    ("something else entirely", ["SELECT ON *.*"], None),
])
def test_suggest_takes_the_privilege_the_error_names(error, remaining, expected):
    assert grants.suggest(error, remaining) == expected


def doc_sql_blocks() -> dict:
    """{(major, minor): [statements]} from the ```sql blocks under a "MariaDB X.Y" heading."""
    blocks, version, fence = {}, None, None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^#+ MariaDB (\d+)\.(\d+)\b", line)
        if heading and fence is None:
            version = (int(heading.group(1)), int(heading.group(2)))
        elif line.startswith("```"):
            if fence is None and line.strip() == "```sql" and version and version not in blocks:
                fence = blocks.setdefault(version, [])
            elif fence is not None:
                fence, version = None, None
        elif fence is not None and line.strip() and not line.lstrip().startswith("--"):
            fence.append(line)
    return blocks


@pytest.mark.parametrize("version", VERSIONS)
def test_the_docs_show_exactly_the_statements_the_tests_apply(version):
    blocks = doc_sql_blocks()
    assert version in blocks, f"docs/grants.md has no ```sql block under a 'MariaDB {version[0]}.{version[1]}' heading"
    assert blocks[version] == grants.account_sql(version, "dbtools", ("localhost", "10.0.0.%"))


def test_the_readme_shows_the_same_account():
    """The README's copy-paste block is the account of docs/grants.md (10.11 and 11.x alike)."""
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("```sql\n", 1)[1].split("```", 1)[0].strip().splitlines()
    for version in VERSIONS:
        assert block == grants.account_sql(version, "dbtools", ("localhost", "10.0.0.%"))


def test_bindep_lists_the_node_packages_the_readme_names():
    """Every Debian package of the README's node requirements table is in bindep.txt (for dpkg), and back."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("| needed for | Debian package |", 1)[1].split("\n\n", 1)[0]
    named = set()
    for row in table.splitlines()[2:]:
        named.update(re.findall(r"`([a-z0-9][a-z0-9.+-]+)`", row.rsplit("|", 2)[1]))
    listed = set()
    for line in (ROOT / "bindep.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _sep, profiles = line.partition(" ")
            if "platform:rpm" not in profiles:
                listed.add(name)
    assert named, "the README's node table was not found"
    assert named == listed, f"README only: {sorted(named - listed)}; bindep.txt only: {sorted(listed - named)}"
