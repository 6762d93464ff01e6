#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_binlog_info
short_description: How far behind the binlog archive is, and whether it has a gap
version_added: 0.3.0
description:
  - Reads the binlog archive copies in a backup directory (C(<path>/binlogs/<cluster>/index.json) and the segment files
    beside it, as M(dbtools.galera.galera_binlog_archive) writes them) without a database login.
  - With O(merge), it reads nothing and combines earlier results of this module (one per node) per cluster, the newest
    index, the segment files found on every node, the archive's lag (now minus the moment up to which every committed
    write is archived) and its gaps by GTID range (recorded gaps, and archived files no node holds any more).
  - With O(max_lag) and O(fail_on), a check for cron, monitoring and the C(dbtools.galera.freshness) playbook. It fails
    with the summary line as its message, still returning the data.
  - Read-only, never reports a change.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  path:
    description: The backup directory (the role's C(galera_backup_dir)).
    type: path
    default: /var/backups/galera
  cluster:
    description: Only the archive of this cluster.
    type: str
  max_lag:
    description: The largest lag, in seconds, the archive may have.
    type: int
  fail_on:
    description:
      - Fail, with the summary line as the message, when any of these conditions holds.
      - V(archive_lag), the lag is over O(max_lag) or unknown (needs O(max_lag)).
      - V(archive_gap), the archive has a gap (a recorded one, or an archived file no node holds).
      - V(no_archive), no archive index was found.
    type: list
    elements: str
    choices: [archive_lag, archive_gap, no_archive]
    default: []
  merge:
    description: Earlier results of this module to combine, by a label (the host); no directory is read.
    type: dict
seealso:
  - module: dbtools.galera.galera_binlog_archive
  - module: dbtools.galera.galera_backup_info
"""

EXAMPLES = r"""
- name: Read this node's archive copy
  dbtools.galera.galera_binlog_info:
    path: /var/backups/galera
  register: archive

- name: Fail when the archive is more than 15 minutes behind or has a gap
  dbtools.galera.galera_binlog_info:
    merge: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, 'archive'))) }}"
    max_lag: 900
    fail_on: [archive_lag, archive_gap]
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
archives:
  description: Without O(merge), per cluster, C(index) (the index without the encryption records) and C(files) found.
  returned: always
  type: dict
clusters:
  description: With O(merge), per cluster, C(index), C(lag_seconds), C(gaps) (C(first), C(last), C(text)) and C(missing).
  returned: always
  type: dict
alerts:
  description: The conditions that hold, out of V(archive_lag), V(archive_gap) and V(no_archive).
  returned: always
  type: list
  elements: str
failing:
  description: The conditions of O(fail_on) that hold; the module failed when this is not empty.
  returned: always
  type: list
  elements: str
problems:
  description: Unreadable indexes, nodes that did not answer.
  returned: always
  type: list
  elements: str
summary:
  description: One line, starting C(OK), C(WARNING) or C(CRITICAL).
  returned: always
  type: str
  sample: "OK: cluster prod binlog archive up to 1-1-48211 (2026-12-02T10:14:58Z), lag 212 s (max 900 s), 31 segment(s)"
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dbtools.galera.plugins.module_utils import _binlog, _catalog

SEGMENT_KEYS = ("kind", "name", "node", "file", "start", "first", "last", "first_gtid", "last_gtid", "first_time",
                "last_time", "bytes", "reason")


def read_archives(path: str, cluster) -> dict:
    """Every ``binlogs/<cluster>/`` under ``path``: its index (reduced) and files; problems."""
    out, problems = {}, []
    base = os.path.join(path, _binlog.AREA)
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return dict(archives={}, problems=[])
    for name in names:
        area = os.path.join(base, name)
        if os.path.islink(area) or not os.path.isdir(area):
            continue
        index_path = os.path.join(area, _binlog.INDEX)
        try:
            with open(index_path, "r", encoding="utf-8") as handle:
                index = json.load(handle)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{index_path} is not a readable archive index: {exc}")
            continue
        if not _binlog.valid_index(index):
            problems.append(f"{index_path} is not a binlog archive index of this collection: ignored")
            continue
        if cluster is not None and index.get("cluster") != cluster:
            continue
        reduced = {k: v for k, v in index.items() if k != "segments"}
        reduced["segments"] = [{k: s.get(k) for k in SEGMENT_KEYS} for s in index["segments"]]
        files = sorted(e.name for e in os.scandir(area) if e.is_file(follow_symlinks=False)
                       and _binlog.is_segment_name(e.name))
        out[str(index.get("cluster"))] = dict(index=reduced, files=files, path=area)
    return dict(archives=out, problems=problems)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/var/backups/galera"),
            cluster=dict(type="str"),
            max_lag=dict(type="int"),
            fail_on=dict(type="list", elements="str", default=[], choices=list(_catalog.ARCHIVE_CONDITIONS)),
            merge=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["max_lag"] is not None and p["max_lag"] <= 0:
        module.fail_json(msg=f"max_lag must be a positive number of seconds, got {p['max_lag']}")
    if "archive_lag" in p["fail_on"] and p["max_lag"] is None:
        module.fail_json(msg="fail_on names archive_lag but max_lag is not set: give max_lag, in seconds")
    if p["merge"] is not None:
        reads = {}
        for label, result in p["merge"].items():
            if isinstance(result, dict) and p["cluster"] is not None and isinstance(result.get("archives"), dict):
                result = dict(result, archives={k: v for k, v in result["archives"].items() if k == p["cluster"]})
            reads[label] = result
        archives = {}
    else:
        found = read_archives(p["path"], p["cluster"])
        reads = {"local": found}
        archives = found["archives"]
    verdict = _catalog.archive_freshness(reads, max_lag=p["max_lag"], fail_on=p["fail_on"])
    verdict.update(changed=False, archives=archives)
    if verdict["failing"]:
        module.fail_json(msg=verdict["summary"], **{k: v for k, v in verdict.items() if k != "changed"})
    module.exit_json(**verdict)


if __name__ == "__main__":
    main()
