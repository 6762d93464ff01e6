#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_wait_synced
short_description: Wait until a Galera node is Synced, Primary, ready and caught up
version_added: 0.1.0
description:
  - Polls the node every O(poll_interval) seconds until it is Synced, in a Primary component,
    C(wsrep_ready=ON), its receive queue is at most O(max_recv_queue) and the cluster has at least
    O(min_cluster_size) members, or until O(timeout) seconds have passed.
  - On timeout it fails and the message names every condition still false, with its last value.
  - Read-only, never reports a change. A server that is not reachable yet (starting, joining) is
    polled again until the timeout. A refused login fails at once.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - dbtools.galera._connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  timeout:
    description: Seconds to wait before failing.
    type: int
    default: 300
  poll_interval:
    description: Seconds between two reads.
    type: float
    default: 0.5
  max_recv_queue:
    description:
      - The longest receive queue (C(wsrep_local_recv_queue)) that counts as caught up.
      - Defaults to half the node's flow-control resume point, C(gcs.fc_limit * gcs.fc_factor).
    type: int
  min_cluster_size:
    description: The least C(wsrep_cluster_size) to accept.
    type: int
    default: 1
seealso:
  - module: dbtools.galera.galera_desync
"""

EXAMPLES = r"""
- name: Wait for the node to be back in sync after maintenance
  dbtools.galera.galera_wait_synced:
    timeout: 600
    min_cluster_size: 3

- name: Gate on a fully drained queue
  dbtools.galera.galera_wait_synced:
    max_recv_queue: 0
"""

RETURN = r"""
elapsed:
  description: Seconds waited.
  returned: always
  type: float
  sample: 2.04
polls:
  description: How many times the node was read.
  returned: always
  type: int
  sample: 3
max_recv_queue_seen:
  description: The longest receive queue read while waiting.
  returned: always
  type: int
  sample: 12
max_recv_queue:
  description: The threshold in effect.
  returned: always
  type: int
  sample: 8
status:
  description: The node's wsrep figures at the last read (null when it was never reachable).
  returned: always
  type: dict
  sample: {"local_state_comment": "Synced", "cluster_status": "Primary", "ready": true, "recv_queue": 0,
           "cluster_size": 3}
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _resync
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, check_non_negative, run


def main():
    module = build_module(
        dict(
            timeout=dict(type="int", default=300),
            poll_interval=dict(type="float", default=0.5),
            max_recv_queue=dict(type="int"),
            min_cluster_size=dict(type="int", default=1),
        ),
        supports_check_mode=True,
    )
    p = module.params
    check_non_negative(module, ["timeout", "max_recv_queue", "min_cluster_size"])
    if p["poll_interval"] <= 0:
        module.fail_json(msg=f"poll_interval must be positive, got {p['poll_interval']}")

    def work(session):
        return _resync.wait_until_ready(session, p["timeout"], p["poll_interval"], p["max_recv_queue"],
                                        p["min_cluster_size"])

    run(module, work, lazy=True)


if __name__ == "__main__":
    main()
