# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The galera_backup_copy module's work (private): open the destination store, copy the local
backup there (or repair the copy there), verify it there, apply retention there. The stores are in
``_stores`` (interface, local directory), ``_store_ssh`` and ``_store_s3``; retention in
``_retention``. A new kind of store is one class and one line in ``KINDS``."""

from __future__ import annotations

import time

from ansible_collections.dbtools.galera.plugins.module_utils import _catalog, _module, _retention, _stores
from ansible_collections.dbtools.galera.plugins.module_utils._errors import GaleraError
from ansible_collections.dbtools.galera.plugins.module_utils._store_s3 import S3Store
from ansible_collections.dbtools.galera.plugins.module_utils._store_ssh import SshStore

KINDS = ("ssh", "s3", "local")


def store_fields() -> dict:
    """The argument spec of a store: galera_backup_copy's ``dest``, the fields of a ``galera_backup_copies``
    item (which adds ``name`` and its retention rules) and of a restore's ``source``."""
    return dict(
        type=dict(type="str", required=True, choices=list(KINDS)),
        host=dict(type="str"),
        port=dict(type="int", default=22),
        user=dict(type="str", default="root"),
        path=dict(type="str"),
        identity_file=dict(type="path"),
        known_hosts_file=dict(type="path"),
        strict_host_key_checking=dict(type="str", choices=["yes", "accept-new"], default="yes", no_log=False),
        bwlimit=dict(type="int", default=0),
        bucket=dict(type="str"),
        prefix=dict(type="str", default=""),
        endpoint_url=dict(type="str"),
        region=dict(type="str"),
        access_key=dict(type="str", no_log=True),
        secret_key=dict(type="str", no_log=True),
        storage_class=dict(type="str"),
        validate_certs=dict(type="bool", default=True),
        ca_bundle=dict(type="path"),
    )


def open_store(runner, opts: dict) -> _stores.Store:
    """The store ``opts`` describes (galera_backup_copy's ``dest``, ``name`` added): ``type`` local,
    ssh or s3. ``runner`` runs commands (an AnsibleModule: ``run_command``, ``get_bin_path``)."""
    kind = opts.get("type")
    if kind == "local":
        if not opts.get("path"):
            raise GaleraError("dest.path is required with dest.type=local. Nothing was changed.")
        return _stores.LocalStore(opts["path"], name=opts.get("name"))
    if kind == "ssh":
        return SshStore(runner, opts)
    if kind == "s3":
        return S3Store(opts)
    raise GaleraError(f"dest.type {kind!r} is not one of {', '.join(KINDS)}. Nothing was changed.")


def plan_copy(local: _stores.LocalBackup, state: dict | None, label: str):
    """(action "copy", "none" or "repair", files to repair or None) from ``store.inspect(local)``."""
    if state is None:
        return "copy", None
    remote = state["manifest"]
    if isinstance(remote, dict) and str(remote.get("sha256", "")).lower() != local.sums_sha:
        raise GaleraError(f"{label} already holds a DIFFERENT backup named {local.id} (its manifest names "
                          f"sha256 {remote.get('sha256')!r}, this one {local.sums_sha}). Nothing was changed; "
                          f"find out which is right, then remove or rename the one at the destination.")
    if not state["bad"] and not state["extra"]:
        return "none", None
    return "repair", list(state["bad"])


def copy(module, result: dict, policy: dict | None = None) -> dict:
    """Copy, verify, then retention under ``policy`` (``_retention.policy_from_options``; None: none)."""
    p = module.params
    local = _stores.LocalBackup(p["src"])
    result.update(id=local.id, bytes=local.bytes, files=len(local.files), excluded=local.excluded)
    state_uuid = p.get("cluster_uuid") or local.state_uuid
    if p.get("cluster_uuid") and local.state_uuid and p["cluster_uuid"] != local.state_uuid:
        raise GaleraError(f"cluster_uuid {p['cluster_uuid']} is not the state uuid of the backup {local.id} "
                          f"({local.state_uuid}): give that backup's cluster uuid, or leave cluster_uuid out. "
                          "Nothing was changed.")
    dest = open_store(module, dict(p["dest"], name=p["name"]))
    result.update(dest=dest.describe(), url=dest.url(local.id))
    label = f"{p['name']} ({result['url']})" if p["name"] else result["url"]
    if local.excluded:
        module.warn(f"{len(local.excluded)} file(s) of {local.path} are not listed in SHA256SUMS and are not "
                    f"copied: {', '.join(local.excluded[:5])}")

    action, repair = plan_copy(local, dest.inspect(local), label)
    if action == "repair":
        module.warn(f"the copy at {label} does not match ({', '.join(repair[:5]) or 'extra files there'}): "
                    f"{'it would be' if module.check_mode else 'it was'} repaired (copied again and verified)")
    result.update(repaired=list(repair or []), copied=action != "none", changed=action != "none")
    if action == "none":
        result["verified"] = True
    elif not module.check_mode:
        dest.put(local, repair, _stores.new_copy_record(local, owner=p["name"]))
        result["verified"] = True

    if policy is not None:
        planned = _retention.run(dest, local.cluster, policy, module.check_mode, state_uuid=state_uuid,
                                 margin=p["partial_margin"], protect=[local.id], extra=[local.manifest])
        result.update(removed=planned["remove"], removed_partial=planned["remove_partial"], kept=planned["kept"],
                      in_flight=planned["in_flight"], problems=planned["problems"], refused=planned["refused"],
                      reasons={i: _catalog.reason_text(r) for i, r in planned["reasons"].items()},
                      oldest_kept=planned["oldest_kept"])
        if module._diff:
            result["diff"] = _retention.plan_diff(planned, label, module.check_mode)
        for text in planned["problems"]:
            module.warn(text)
        if planned["remove"] or planned["remove_partial"]:
            result["changed"] = True
    return result


def run(module) -> None:
    """Copy, verify and apply retention for the galera_backup_copy module; exits the module."""
    p = module.params
    started = time.monotonic()
    result = dict(changed=False, dest=None, url=None, id=None, bytes=0, files=0, verified=False, copied=False,
                  repaired=[], seconds=0.0, removed=[], removed_partial=[], kept=[], in_flight=[], excluded=[],
                  problems=[], refused=[], reasons={}, oldest_kept=[])
    for option in ("keep", "partial_margin"):
        if p.get(option) is not None and p[option] < (1 if option == "keep" else 0):
            module.fail_json(msg=f"{option} must be at least {1 if option == 'keep' else 0}, got {p[option]}"
                                 f"{' (leave it out for no retention at the destination)' if option == 'keep' else ''}"
                                 ". Nothing was changed.", **result)
    try:
        policy = _retention.policy_from_options(p["keep"], p["keep_tiers"], p["max_age"], required=False)
    except GaleraError as exc:
        module.fail_json(msg=exc.msg, **result)

    def work():
        try:
            copy(module, result, policy)
        except GaleraError as exc:
            result["seconds"] = round(time.monotonic() - started, 1)
            raise GaleraError((f"copy to {p['name']}: " if p["name"] else "") + exc.msg, **dict(result, **exc.details))
        result["seconds"] = round(time.monotonic() - started, 1)
        result["msg"] = summary(result, module.check_mode)
        return result
    _module.run_local(module, work)


def summary(result: dict, check_mode: bool) -> str:
    """One line saying what was (or, in check mode, would be) done."""
    size = _catalog.human_bytes(result["bytes"])
    if result["repaired"]:
        text = (f"{result['url']} did not match ({', '.join(result['repaired'][:5])}): "
                f"{'it would be repaired' if check_mode else 'repaired'}")
    elif result["copied"]:
        text = f"{'would copy' if check_mode else 'copied'} {result['files']} files ({size}) to {result['url']}"
    else:
        text = f"{result['url']} already holds this backup ({result['files']} files, {size})"
    if result["verified"]:
        text += ", verified there"
    if result["removed"] or result["removed_partial"]:
        text += (f"; retention {'would remove' if check_mode else 'removed'} "
                 f"{', '.join(result['removed'] + result['removed_partial'])}")
    if result["refused"]:
        text += f"; the destination refuses to delete {', '.join(r['id'] for r in result['refused'])}: kept"
    return text
