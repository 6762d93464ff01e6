# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Private doc fragment of dbtools.galera: do not use it outside this collection.


class ModuleDocFragment:
    # The retention rules besides keep (module_utils/_retention.py retention_argument_spec), shared by
    # galera_backup_prune and galera_backup_copy. Each module documents its own keep.
    DOCUMENTATION = r"""
options:
  max_age:
    description:
      - Keep every restorable backup younger than this many seconds (by its C(finished_at)), at least V(1).
      - For example V(172800) keeps every backup of the last two days, however many there are.
    type: int
  keep_tiers:
    description:
      - Calendar tiers (grandfather-father-son). For each tier, keep the newest restorable backup of each of
        the N most recent periods that have a restorable backup; periods without one do not count. V(0) or no
        value turns a tier off.
      - Periods are calendar periods in UTC. Weeks are ISO 8601 weeks (Monday to Sunday; 2027-01-01 is in week
        2026-W53). A backup belongs to the period of its C(finished_at).
      - Each tier is counted over all the backups, independently of the others (restic's rule; borg counts a tier
        only over the backups earlier tiers did not keep). One backup can be the newest of its day, its week and
        its month and is then kept by all three, and a tier never keeps more than N backups.
      - Tiers count the periods that have a backup, not the calendar up to now, so backups are not lost because
        backups stopped or a run came late; only O(max_age) depends on the current time.
      - A kept backup is kept with its whole chain, so an incremental backup kept by a tier keeps its full backup
        and the incremental backups in between even when no rule keeps those.
    type: dict
    suboptions:
      hourly:
        description: How many hours (that have a backup) keep their newest backup.
        type: int
      daily:
        description: How many days (that have a backup) keep their newest backup.
        type: int
      weekly:
        description: How many ISO weeks (that have a backup) keep their newest backup.
        type: int
      monthly:
        description: How many months (that have a backup) keep their newest backup.
        type: int
      yearly:
        description: How many years (that have a backup) keep their newest backup.
        type: int
"""
