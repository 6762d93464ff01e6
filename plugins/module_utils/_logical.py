# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Loading a logical backup into a running Galera cluster through one node, Galera-safe (private).

- ``DumpFilter`` reads a mysqldump/mariadb-dump text line by line and leaves out what must not reach
  a Galera node: ``LOCK TABLES``/``UNLOCK TABLES`` (explicit table locks are not replicated; Galera
  ignores or refuses them), ``SET @@SESSION.SQL_LOG_BIN = 0`` (a load through one node must
  replicate), and, unless asked, the system schemas (``mysql`` with ``mysql.global_priv`` and the
  ``mysql.wsrep_*`` tables Galera keeps itself, ``sys``). It relies on the comment headers mysqldump
  writes (``-- Current Database:``, ``-- Table structure for table``), never on parsing SQL values.
- ``schema_problems`` reads the ``CREATE TABLE`` statements (of a dump, or of mydumper's
  ``*-schema.sql`` files) and names every table that is not InnoDB or has no primary key: Galera
  replicates only InnoDB rows, and a table without a primary key replicates slowly and unsafely.
  They are refused before anything is loaded.

Pure functions over text; no Ansible imports.
"""

from __future__ import annotations

import re

SYSTEM_SCHEMAS = ("mysql", "sys", "performance_schema", "information_schema")
# Engines Galera replicates rows of (SEQUENCE tables are InnoDB sequences).
REPLICATED_ENGINES = ("innodb",)

_CURRENT_DB = re.compile(r"^-- Current Database: `((?:[^`]|``)+)`")
_USE = re.compile(r"^USE `((?:[^`]|``)+)`;")
_TABLE_HEADER = re.compile(r"^-- (?:Table structure|Dumping data|Temporary table structure|Final view structure) "
                           r"for (?:table|view) `((?:[^`]|``)+)`")
_LOCKS = re.compile(r"^(?:LOCK TABLES\b.*;|UNLOCK TABLES;)\s*$", re.I)
_LOG_BIN = re.compile(r"^SET @@SESSION\.SQL_LOG_BIN\s*=\s*0\s*;\s*$", re.I)
_CREATE_TABLE = re.compile(r"^CREATE TABLE (?:IF NOT EXISTS )?`((?:[^`]|``)+)`(?:\.`((?:[^`]|``)+)`)? \(", re.I)
_END_OF_CREATE = re.compile(r"^\)(.*);\s*$")
_ENGINE = re.compile(r"\bENGINE\s*=\s*(\w+)", re.I)


def _unquote(name: str) -> str:
    return name.replace("``", "`")


def skipped(schema: str | None, table: str | None, system: bool, own=()) -> bool:
    """True when ``schema``.``table`` is left out of a load: the system schemas (unless ``system``) and
    ``own`` (the collection's lease schema: the running cluster's live lease is never overwritten)."""
    if schema is None:
        return False
    if schema in own:
        return True
    return not system and schema.lower() in SYSTEM_SCHEMAS


class DumpFilter:
    """Feed it the dump's lines (``line``), it returns each line to load or None; ``counts`` says what
    was left out."""

    def __init__(self, system: bool = False, own=()):
        self.system = system
        self.own = tuple(own)
        self.schema = None
        self.table = None
        self.counts = dict(locks=0, log_bin=0, skipped_lines=0)
        self.skipped_schemas = set()

    def line(self, text: str):
        match = _CURRENT_DB.match(text)
        if match:
            self.schema, self.table = _unquote(match.group(1)), None
        else:
            match = _USE.match(text)
            if match:
                self.schema = _unquote(match.group(1))
            else:
                match = _TABLE_HEADER.match(text)
                if match:
                    self.table = _unquote(match.group(1))
        if _LOCKS.match(text):
            self.counts["locks"] += 1
            return None
        if _LOG_BIN.match(text):
            self.counts["log_bin"] += 1
            return None
        if skipped(self.schema, self.table, self.system, self.own):
            self.counts["skipped_lines"] += 1
            self.skipped_schemas.add(self.schema)
            return None
        return text


def schema_problems(lines, default_schema: str | None = None, system: bool = False, require_pk: bool = True,
                    own=()) -> list:
    """The tables of ``lines`` (a dump, or schema files) that Galera cannot replicate safely: each
    ``dict(table="schema.table", problem=...)`` for an engine other than InnoDB or no primary key."""
    problems = []
    schema = default_schema
    current = None
    has_pk = False
    for raw in lines:
        text = raw.rstrip("\n")
        match = _CURRENT_DB.match(text) or _USE.match(text)
        if match:
            schema = _unquote(match.group(1))
            continue
        match = _CREATE_TABLE.match(text)
        if match:
            if match.group(2):
                current = (_unquote(match.group(1)), _unquote(match.group(2)))
            else:
                current = (schema, _unquote(match.group(1)))
            has_pk = False
            continue
        if current is None:
            continue
        if re.match(r"^\s*PRIMARY KEY\b", text, re.I):
            has_pk = True
            continue
        end = _END_OF_CREATE.match(text)
        if end:
            engine_match = _ENGINE.search(end.group(1))
            engine = engine_match.group(1) if engine_match else "InnoDB"
            name = f"{current[0]}.{current[1]}" if current[0] else current[1]
            if not skipped(current[0], current[1], system, own):
                if engine.lower() not in REPLICATED_ENGINES:
                    problems.append(dict(table=name, problem=f"engine {engine}, not InnoDB"))
                elif require_pk and not has_pk:
                    problems.append(dict(table=name, problem="no primary key"))
            current = None
    return problems


def describe_problems(problems: list) -> str:
    return ", ".join(f"{p['table']} ({p['problem']})" for p in problems[:20]) + (" and more" if len(problems) > 20 else "")


def myloader_regex(system: bool, own=()) -> str:
    """The ``--regex`` (on ``schema.table``) that keeps myloader away from the skipped schemas."""
    names = list(own) + ([] if system else list(SYSTEM_SCHEMAS))
    return r"^(?!(" + "|".join(re.escape(n) for n in names) + r")\.)"


def mydumper_schema_file(name: str) -> tuple | None:
    """(schema, table) of a mydumper ``<schema>.<table>-schema.sql[.zst|.gz]`` file name, else None."""
    match = re.match(r"^(.+?)\.(.+)-schema\.sql(?:\.zst|\.gz)?$", name)
    if not match or name.endswith("-schema-create.sql") or "-schema-view" in name or "-schema-triggers" in name:
        return None
    return match.group(1), match.group(2)
