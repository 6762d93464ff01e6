# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Logical loads into a Galera cluster (_logical) and the restore drill's freshness (_catalog)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog, _logical, _recovery

# A mysqldump --all-databases in the shape MariaDB 10.11's mariadb-dump writes it.
DUMP = """\
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
SET @@SESSION.SQL_LOG_BIN= 0;

--
-- Current Database: `mysql`
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mysql` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;

USE `mysql`;

--
-- Table structure for table `global_priv`
--

DROP TABLE IF EXISTS `global_priv`;
CREATE TABLE `global_priv` (
  `Host` char(255) NOT NULL DEFAULT '',
  `User` char(128) NOT NULL DEFAULT '',
  `Priv` longtext NOT NULL DEFAULT '{}',
  PRIMARY KEY (`Host`,`User`)
) ENGINE=Aria DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_bin PAGE_CHECKSUM=1 TRANSACTIONAL=1;

LOCK TABLES `global_priv` WRITE;
INSERT INTO `global_priv` VALUES ('localhost','root','{}');
UNLOCK TABLES;

--
-- Table structure for table `wsrep_cluster`
--

CREATE TABLE `wsrep_cluster` (
  `cluster_uuid` char(36) NOT NULL,
  PRIMARY KEY (`cluster_uuid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3;

--
-- Current Database: `dbtools_galera`
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `dbtools_galera`;

USE `dbtools_galera`;

--
-- Table structure for table `desync_lease`
--

CREATE TABLE `desync_lease` (
  `lease_key` varchar(32) NOT NULL,
  PRIMARY KEY (`lease_key`)
) ENGINE=InnoDB;

LOCK TABLES `desync_lease` WRITE;
INSERT INTO `desync_lease` VALUES ('desync');
UNLOCK TABLES;

--
-- Current Database: `shop`
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop`;

USE `shop`;

--
-- Table structure for table `orders`
--

DROP TABLE IF EXISTS `orders`;
CREATE TABLE `orders` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `note` varchar(40) DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4;

LOCK TABLES `orders` WRITE;
/*!40000 ALTER TABLE `orders` DISABLE KEYS */;
INSERT INTO `orders` VALUES (1,'LOCK TABLES `x` WRITE;'),(2,'-- Current Database: `mysql`');
/*!40000 ALTER TABLE `orders` ENABLE KEYS */;
UNLOCK TABLES;

--
-- Table structure for table `log`
--

CREATE TABLE `log` (
  `at` datetime NOT NULL,
  KEY `at` (`at`)
) ENGINE=InnoDB;

--
-- Table structure for table `legacy`
--

CREATE TABLE `legacy` (
  `id` int NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=MyISAM;
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;
-- Dump completed on 2026-12-01  3:01:00
"""


def filtered(system=False, own=("dbtools_galera",)):
    keep = _logical.DumpFilter(system, own)
    out = [line for line in (keep.line(text) for text in DUMP.splitlines(keepends=True)) if line is not None]
    return "".join(out), keep


def test_the_filter_drops_table_locks_the_log_bin_switch_the_system_schemas_and_our_lease():
    text, keep = filtered()
    assert "LOCK TABLES `orders`" not in text and "UNLOCK TABLES;" not in text
    assert "SQL_LOG_BIN" not in text
    assert "global_priv" not in text and "wsrep_cluster" not in text and "USE `mysql`" not in text
    assert "desync_lease" not in text
    assert "USE `shop`;" in text and "CREATE TABLE `orders`" in text
    # Values that look like headers or locks stay: only whole lines of mysqldump's own shape count.
    assert "(1,'LOCK TABLES `x` WRITE;'),(2,'-- Current Database: `mysql`');" in text
    assert keep.counts["locks"] == 6 and keep.counts["log_bin"] == 1
    assert keep.skipped_schemas == {"mysql", "dbtools_galera"}


def test_system_schemas_load_when_asked_but_never_our_lease():
    text, keep = filtered(system=True)
    assert "global_priv" in text and "wsrep_cluster" in text
    assert "desync_lease" not in text and "LOCK TABLES `global_priv`" not in text
    assert keep.skipped_schemas == {"dbtools_galera"}


def test_tables_galera_cannot_replicate_are_named_before_anything_loads():
    problems = _logical.schema_problems(DUMP.splitlines(), own=("dbtools_galera",))
    assert problems == [dict(table="shop.log", problem="no primary key"),
                        dict(table="shop.legacy", problem="engine MyISAM, not InnoDB")]
    assert "shop.log (no primary key), shop.legacy (engine MyISAM, not InnoDB)" == _logical.describe_problems(problems)
    # mysql.global_priv (Aria) is a system table: left out, so not judged, unless system tables are loaded.
    assert dict(table="mysql.global_priv", problem="engine Aria, not InnoDB") in _logical.schema_problems(
        DUMP.splitlines(), system=True)
    assert _logical.schema_problems(DUMP.splitlines(), require_pk=False, own=("dbtools_galera",)) == [
        dict(table="shop.legacy", problem="engine MyISAM, not InnoDB")]


def test_mydumper_schema_files_and_the_myloader_regex():
    assert _logical.mydumper_schema_file("shop.orders-schema.sql.zst") == ("shop", "orders")
    assert _logical.mydumper_schema_file("shop-schema-create.sql") is None
    assert _logical.mydumper_schema_file("shop.orders.00000.sql.zst") is None
    regex = re.compile(_logical.myloader_regex(False, ("dbtools_galera",)))
    assert regex.match("shop.orders") and not regex.match("mysql.global_priv")
    assert not regex.match("dbtools_galera.desync_lease") and not regex.match("sys.x")
    regex = re.compile(_logical.myloader_regex(True, ("dbtools_galera",)))
    assert regex.match("mysql.global_priv") and not regex.match("dbtools_galera.desync_lease")


# ---------------------------------------------------------------------------------------------
# The drill's record and freshness

NOW = datetime(2026, 12, 10, 12, 0, 0, tzinfo=timezone.utc)


def drill(result="ok", days=1, cluster="dbtools", **kw):
    moment = (NOW - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = _recovery.drill_record(cluster, result, moment, moment, 95.2, "drill1",
                                    dict(id="dbtools_db3_20261201T030000Z-1a2b3c4d"),
                                    error="tables missing" if result != "ok" else None,
                                    step="checking the tables" if result != "ok" else None)
    record.update(kw)
    return record


def test_a_recent_good_drill_is_ok():
    verdict = _catalog.drill_freshness([drill(days=2)], now=NOW, max_age=35 * 86400, fail_on=_catalog.DRILL_CONDITIONS)
    assert verdict["alerts"] == [] and verdict["failing"] == []
    assert verdict["summary"].startswith("OK: cluster dbtools last successful drill 48.0 h ago (max 840.0 h)")


def test_no_successful_drill_in_n_days_is_critical():
    verdict = _catalog.drill_freshness([drill(days=40)], now=NOW, max_age=35 * 86400, fail_on=["drill_stale"])
    assert verdict["failing"] == ["drill_stale"] and verdict["summary"].startswith("CRITICAL")
    assert "STALE" in verdict["summary"]


def test_a_failed_drill_keeps_the_age_of_the_last_good_one():
    good = drill(days=3)
    failed = drill("failed", days=1, last_ok=good)
    verdict = _catalog.drill_freshness([failed], now=NOW, max_age=35 * 86400, fail_on=["drill_stale", "drill_failed"])
    assert verdict["alerts"] == ["drill_failed"] and verdict["failing"] == ["drill_failed"]
    assert verdict["clusters"]["dbtools"]["age_seconds"] == 3 * 86400
    assert "last drill FAILED" in verdict["summary"] and "(checking the tables): tables missing" in verdict["summary"]


def test_no_record_at_all_and_a_named_cluster_without_one():
    assert _catalog.drill_freshness([], now=NOW, max_age=86400)["alerts"] == ["drill_stale", "no_drill"]
    verdict = _catalog.drill_freshness([drill()], now=NOW, clusters=["prod"], fail_on=["no_drill"])
    assert verdict["failing"] == ["no_drill"] and "cluster prod has no restore drill" in verdict["summary"]


def test_records_are_read_from_their_directory_and_strangers_ignored(tmp_path):
    (tmp_path / _catalog.drill_file_name("db tools/x")).write_text(json.dumps(drill(cluster="db tools/x")))
    (tmp_path / "drill-garbage.json").write_text("{not json")
    (tmp_path / "drill-other.json").write_text(json.dumps(dict(kind="something else")))
    (tmp_path / "unrelated.json").write_text(json.dumps(drill()))
    found = _catalog.read_drills(str(tmp_path))
    assert [r["cluster"] for r in found["drills"]] == ["db tools/x"]
    assert _catalog.drill_file_name("db tools/x") == "drill-db-tools-x.json"
    assert len(found["problems"]) == 2
    assert _catalog.read_drills(str(tmp_path / "absent")) == dict(drills=[], problems=[], exists=False)


@pytest.mark.parametrize("record", [None, {}, dict(kind=_catalog.DRILL_KIND, result="ok"),
                                    dict(kind=_catalog.DRILL_KIND, result="maybe", finished_at="2026-12-01T00:00:00Z")])
def test_invalid_records_do_not_count(record):
    assert not _catalog.valid_drill(record)
