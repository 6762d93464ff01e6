#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: galera_lb
short_description: Take a Galera node out of HAProxy's rotation for a backup, and put it back
version_added: 0.3.0
description:
  - A desynced node falls behind the cluster while a backup reads it, so clients it serves read stale
    rows and wait on its IO. Load balancers should take a node in C(Donor/Desynced) state out of
    rotation. This module does it through HAProxy's runtime API (its C(stats socket)), for one or
    several HAProxy instances.
  - With O(state=drain), C(set server <backend>/<server> state drain) on every instance. HAProxy
    sends the server no new connection (health checks go on). A server that is already out of rotation
    (drain or maintenance, set by an operator or an agent) is left as it is, with a warning, and the
    result says it was not changed, so a caller puts back only what it took out.
  - With O(state=ready), C(set server <backend>/<server> state ready) where the server has a forced drain
    or maintenance. An inherited (tracked server) or DNS maintenance is left as it is, with a warning.
  - Every change is read back with C(show servers state <backend>). Backend and server names must be
    plain HAProxy names (letters, digits, C(-), C(_), C(.), C(:)); nothing else reaches the runtime API.
  - Every instance is tried; when one fails (unreachable, no such backend or server, a socket not at
    C(level admin)) the module fails after trying the others, naming each failure and what was changed.
  - Runs where the runtime API is reachable. A Unix socket is only reachable on HAProxy's host
    (C(delegate_to) that host), a TCP stats socket from anywhere it listens for. It needs no database login.
author:
  - dbtools.galera developers (@dbtools)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reads every instance's state and reports the change it would make, sending no change.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  state:
    description:
      - V(drain) takes the server out of rotation, V(ready) puts it back.
    type: str
    choices: [drain, ready]
    required: true
  haproxy:
    description:
      - The HAProxy instances and, in each, the server that stands for the node.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: A label for messages and results. Defaults to O(haproxy[].socket) or O(haproxy[].address).
        type: str
      socket:
        description:
          - Path of the runtime API's Unix socket on the host the module runs on, from a
            C(stats socket /run/haproxy/admin.sock mode 600 level admin) line of C(haproxy.cfg).
          - Exactly one of O(haproxy[].socket) and O(haproxy[].address).
        type: str
      address:
        description:
          - C(host:port) (or C([ipv6]:port)) of a TCP runtime API, from a
            C(stats socket ipv4@10.0.0.5:9999 level admin) line of C(haproxy.cfg).
          - Exactly one of O(haproxy[].socket) and O(haproxy[].address).
        type: str
      backend:
        description: The backend (or C(listen) section) that balances the Galera nodes.
        type: str
        required: true
      server:
        description: The name of the node's C(server) line in that backend.
        type: str
        required: true
      shutdown_sessions:
        description:
          - With O(state=drain), also close the connections HAProxy still has open to the server
            (C(shutdown sessions server)), so pooled clients reconnect to another node. A query running
            on one of them fails. Without it, open connections keep their server until they close.
        type: bool
        default: false
      host:
        description:
          - Not used by the module. The P(dbtools.galera.galera_backup#role) role runs each instance's step
            on this inventory host (C(delegate_to), default the controller), so the same items serve both.
        type: str
      become:
        description:
          - Not used by the module. The role runs the step with C(become) set to this (default V(false)),
            for a socket only root may open.
        type: bool
  timeout:
    description: Seconds to wait for each answer of the runtime API.
    type: float
    default: 5
notes:
  - A reload of HAProxy resets the servers' runtime state to the configuration, unless C(haproxy.cfg)
    saves and loads it (C(server-state-file), C(load-server-state-from-file)); do not reload during a backup.
  - The runtime API at C(level admin) can change anything in HAProxy; bind a TCP stats socket to an
    address only the controller and the nodes reach.
seealso:
  - module: dbtools.galera.galera_desync
  - name: HAProxy management guide, the runtime API
    description: The commands this module sends.
    link: https://docs.haproxy.org/2.6/management.html#9.3
"""

EXAMPLES = r"""
- name: Take galera-node3 out of both HAProxy instances (TCP runtime API, from the controller)
  dbtools.galera.galera_lb:
    state: drain
    haproxy:
      - {name: lb1, address: "10.0.0.5:9999", backend: galera, server: node3}
      - {name: lb2, address: "10.0.0.6:9999", backend: galera, server: node3}
  delegate_to: localhost

- name: Put it back through the admin socket, on the HAProxy host itself
  dbtools.galera.galera_lb:
    state: ready
    haproxy:
      - {socket: /run/haproxy/admin.sock, backend: galera, server: node3}
  delegate_to: lb1.example.com
  become: true
"""

RETURN = r"""
state:
  description: The state asked for.
  returned: always
  type: str
  sample: drain
instances:
  description:
    - One entry per instance, in the order given. C(before) and C(after) are the server's state in that
      instance (C(state) is V(ready), V(drain) or V(maint); C(admin_state) HAProxy's admin bits;
      C(operational) its health, C(UP) or C(DOWN)). C(changed) tells whether this run changed it; C(commands)
      the runtime API commands sent (in check mode, those it would send); C(note) why nothing was done;
      C(error) why it failed.
  returned: always
  type: list
  elements: dict
  sample:
    - name: lb1
      where: tcp 10.0.0.5:9999
      backend: galera
      server: node3
      before: {state: ready, admin_state: 0, operational: UP}
      after: {state: drain, admin_state: 8, operational: UP}
      changed: true
      commands: ["set server galera/node3 state drain"]
      note: null
"""

from ansible_collections.dbtools.galera.plugins.module_utils import _lb
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError
from ansible_collections.dbtools.galera.plugins.module_utils._module import build_module, run_local


def main():
    module = build_module(
        dict(
            state=dict(type="str", required=True, choices=list(_lb.STATES)),
            haproxy=dict(type="list", elements="dict", required=True, options=_lb.ITEM_SPEC),
            timeout=dict(type="float", default=_lb.DEFAULT_TIMEOUT),
        ),
        connection=False,
        supports_check_mode=True,
    )
    p = module.params

    def work():
        if p["timeout"] <= 0:
            raise GaleraError(f"timeout must be positive, got {p['timeout']}. Nothing was changed.")
        insts = _lb.instances(p["haproxy"], "haproxy")
        if not insts:
            raise GaleraError("haproxy is empty: name at least one instance. Nothing was changed.")
        result = _lb.apply(insts, p["state"], module.check_mode, p["timeout"])
        for item in result["instances"]:
            if item.get("note"):
                module.warn(item["note"])
        if module._diff:
            key = "{name} {backend}/{server}"
            result["diff"] = dict(
                before={key.format(**i): i["before"]["state"] for i in result["instances"]},
                after={key.format(**i): i["after"]["state"] for i in result["instances"]},
            )
        return result

    run_local(module, work)


if __name__ == "__main__":
    main()
