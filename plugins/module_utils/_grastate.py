# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Galera's saved state, ``grastate.dat`` (private).

A restored data directory takes its Galera position from the backup's manifest: the first node of a
rebuilt cluster gets ``safe_to_bootstrap: 1`` (it starts the new Primary component from that
position), the others ``0`` (they join it and, holding the same position, receive only the missing
write-sets by IST). Measured on MariaDB 10.11.19 + Galera 4.23: a node bootstrapped with
``--wsrep-new-cluster`` from ``uuid:seqno`` keeps that uuid and seqno (its first configuration
change takes ``seqno + 1``, which is where its gcache starts), so a joiner at ``uuid:seqno`` gets IST.

``render`` and ``parse`` are pure; ``write`` writes the file atomically, owned by the server's user.
"""

from __future__ import annotations

import os
import re

from ansible_collections.dbtools.galera.plugins.module_utils import _manifest
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError

FILE = "grastate.dat"
VIEW_FILE = "gvwstate.dat"
VERSION = "2.1"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NIL_UUID = "00000000-0000-0000-0000-000000000000"


def check_position(uuid, seqno) -> tuple:
    """(uuid, seqno) of a Galera position fit for grastate.dat; GaleraError naming the bad part."""
    if not isinstance(uuid, str) or not UUID.fullmatch(uuid) or uuid == NIL_UUID:
        raise GaleraError(f"the backup records no usable Galera state uuid ({uuid!r}): its position cannot be "
                          "restored (a logical dump, or a manifest without position.cluster_uuid). Nothing was changed.")
    if isinstance(seqno, bool) or not isinstance(seqno, int) or seqno < 0:
        raise GaleraError(f"the backup records no usable Galera seqno ({seqno!r}): its position cannot be "
                          "restored. Nothing was changed.")
    return uuid, seqno


def render(uuid: str, seqno: int, safe_to_bootstrap: bool) -> str:
    """The text of grastate.dat for the position ``uuid:seqno``."""
    uuid, seqno = check_position(uuid, seqno)
    return ("# GALERA saved state\n"
            f"version: {VERSION}\n"
            f"uuid:    {uuid}\n"
            f"seqno:   {seqno}\n"
            f"safe_to_bootstrap: {1 if safe_to_bootstrap else 0}\n")


def parse(text: str) -> dict:
    """``dict(uuid, seqno, safe_to_bootstrap)`` of a grastate.dat text; missing fields are None."""
    out = dict(uuid=None, seqno=None, safe_to_bootstrap=None)
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if not sep or key.strip().startswith("#"):
            continue
        key, value = key.strip(), value.strip()
        if key == "uuid":
            out["uuid"] = value
        elif key in ("seqno", "safe_to_bootstrap"):
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = None
    return out


def read(datadir: str) -> dict | None:
    """The saved state in ``datadir``, or None when there is no readable grastate.dat."""
    try:
        with open(os.path.join(datadir, FILE), "r", encoding="utf-8", errors="replace") as handle:
            return parse(handle.read(4096))
    except OSError:
        return None


def write(datadir: str, uuid: str, seqno: int, safe_to_bootstrap: bool, uid: int = -1, gid: int = -1) -> str:
    """Write ``<datadir>/grastate.dat`` (0660, owned by ``uid``/``gid``) through a temporary file renamed
    over it, and remove a ``gvwstate.dat`` (the last view of another cluster's life) beside it."""
    text = render(uuid, seqno, safe_to_bootstrap)
    _manifest.write_text_atomic(os.path.join(datadir, FILE), text, 0o660, uid, gid)
    view = os.path.join(datadir, VIEW_FILE)
    if os.path.isfile(view) and not os.path.islink(view):
        os.unlink(view)
    return text
