"""The soak's output: the table of cycles x faults x outcomes, the figures, soak.json and a plot."""

from __future__ import annotations

import json
import os

FAULT_TEXT = {
    "none": "none",
    "controller_kill": "controller killed",
    "tool_kill": "backup tool killed",
    "network_cut": "network cut",
    "member_restart": "member restarted",
    "disk_full": "backup dir full",
    "dba_desync": "DBA desync",
    "second_run": "second run",
    "applier_freeze": "applier frozen",
}


def fault_text(cycle: dict) -> str:
    p = cycle["draw"]["params"]
    name = cycle["draw"]["fault"]
    text = FAULT_TEXT[name]
    if name == "network_cut":
        text += f" {p['seconds']:.0f} s"
    elif name == "member_restart":
        text += f" ({p['member'][-5:]}, down {p['down_seconds']:.0f} s)"
    elif name == "dba_desync":
        text += f" ({p['member'][-5:]}, {p['seconds']:.0f} s)"
    elif name == "applier_freeze":
        text += f" {p['seconds']:.0f} s"
    elif name == "disk_full":
        text += f" {p['hold_seconds']:.0f} s"
    elif name == "second_run":
        text += f" ({p['node'][-5:]})"
    return text


def outcome_text(run: dict | None) -> str:
    if not run:
        return ""
    kind = run["kind"]
    if kind == "published":
        return "published"
    if kind == "killed":
        return run["reason"]
    return f"{kind}: {run['reason']}" if run.get("reason") else kind


def backup_text(draw: dict) -> str:
    text = f"{draw['method']} {draw['type'][:4]}, {draw['verify']}"
    if draw["encrypt"]:
        text += ", enc"
    if draw["compress"] != "zstd":
        text += ", plain"
    return text


def _num(value, digits=1):
    return "" if value is None else f"{value:.{digits}f}"


def rows(cycles: list) -> list:
    out = []
    for c in cycles:
        d = c["draw"]
        node = d["node"]
        figures = c.get("desync", {}).get("nodes", {}).get(node, {})
        phase = d["phase"] or "-"
        hit = c.get("phase_hit") or "-"
        out.append(dict(
            cycle=c["cycle"], node=node[-5:], backup=backup_text(d), fault=fault_text(c),
            phase=phase if hit in (phase, "-") else f"{phase} -> {hit}",
            outcome=outcome_text(c.get("run")) + (f"; 2nd: {outcome_text(c.get('second'))}" if c.get("second") else ""),
            desynced=_num(figures.get("desynced_by_us_seconds")),
            fc=str(sum(n.get("flow_control_sent_while_desynced", 0) for n in c.get("desync", {}).get("nodes", {}).values()
                       if n.get("desynced_by_us_seconds"))),
            to_synced=_num(c.get("to_whole_after_fault")),
            violations=str(len(c.get("violations", []))),
        ))
    return out


COLUMNS = (("cycle", "#"), ("node", "node"), ("backup", "backup"), ("fault", "fault"), ("phase", "phase (drawn -> hit)"),
           ("outcome", "outcome"), ("desynced", "desynced s"), ("fc", "FC sent desynced"),
           ("to_synced", "to Synced after fault s"), ("violations", "violations"))


def markdown(cycles: list) -> str:
    lines = ["| " + " | ".join(title for _k, title in COLUMNS) + " |",
             "|" + "|".join("---" for _c in COLUMNS) + "|"]
    for row in rows(cycles):
        lines.append("| " + " | ".join(str(row[k]).replace("|", "/") for k, _t in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def text_table(cycles: list) -> str:
    table = rows(cycles)
    widths = {k: max([len(t)] + [len(str(r[k])) for r in table]) for k, t in COLUMNS}
    lines = ["  ".join(t.ljust(widths[k]) for k, t in COLUMNS)]
    for row in table:
        lines.append("  ".join(str(row[k]).ljust(widths[k]) for k, _t in COLUMNS))
    return "\n".join(lines) + "\n"


def summary(cycles: list, violations: list) -> dict:
    kinds = {}
    for c in cycles:
        run = c.get("run") or {}
        kinds[run.get("kind", "?")] = kinds.get(run.get("kind", "?"), 0) + 1
    by_fault = {}
    for c in cycles:
        entry = by_fault.setdefault(c["draw"]["fault"], dict(cycles=0, outcomes={}))
        entry["cycles"] += 1
        text = outcome_text(c.get("run"))
        entry["outcomes"][text] = entry["outcomes"].get(text, 0) + 1
    longest = max((c.get("to_whole_after_fault") or 0 for c in cycles), default=0)
    desynced = {}
    fc_total = 0
    for c in cycles:
        for node, fig in c.get("desync", {}).get("nodes", {}).items():
            desynced[node] = round(desynced.get(node, 0) + fig.get("desynced_by_us_seconds", 0), 1)
            if fig.get("desynced_by_us_seconds"):
                fc_total += fig.get("flow_control_sent_while_desynced", 0)
    return dict(cycles=len(cycles), outcomes=kinds, by_fault=by_fault, violations=len(violations),
                longest_to_synced_after_fault_seconds=round(longest, 1), desynced_by_us_seconds=desynced,
                flow_control_sent_while_desynced_by_us=fc_total,
                restore_checks=sum(1 for c in cycles if c.get("restore")),
                restore_checks_ok=sum(1 for c in cycles if (c.get("restore") or {}).get("ok")))


def write(out_dir: str, meta: dict, cycles: list, violations: list) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    result = dict(meta, summary=summary(cycles, violations), violations=violations, cycles=cycles)
    with open(os.path.join(out_dir, "soak.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, default=str)
    with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(cycles))
    return result


def plot(out_dir: str, meta: dict, cycles: list) -> str | None:
    if not cycles:
        return None
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel

    colors = {"published": "tab:green", "refused": "tab:blue", "failed": "tab:orange", "killed": "tab:purple",
              "anomaly": "tab:red"}
    xs = [c["cycle"] for c in cycles]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(cycles) * 0.32), 6.5), sharex=True)
    desynced = [c.get("desync", {}).get("nodes", {}).get(c["draw"]["node"], {}).get("desynced_by_us_seconds", 0)
                for c in cycles]
    top.bar(xs, desynced, color=[colors.get((c.get("run") or {}).get("kind"), "grey") for c in cycles])
    top.set_ylabel("backup node desynced (s)")
    # Patches, not empty bars: an empty bar container gives the legend the default colour for every entry.
    top.legend(handles=[Patch(color=color, label=kind) for kind, color in colors.items()], fontsize=7, ncol=5,
               loc="upper right")
    top.grid(alpha=0.3, axis="y")
    to_whole = [c.get("to_whole_after_fault") or 0 for c in cycles]
    bottom.bar(xs, to_whole, color="tab:grey")
    bottom.axhline(meta["settings"]["lease_ttl"] + meta["settings"]["margin"], color="tab:red", linestyle="--",
                   linewidth=1, label="lease TTL + margin")
    for c in cycles:
        if c.get("violations"):
            bottom.plot(c["cycle"], (c.get("to_whole_after_fault") or 0) + 2, "rx")
    bottom.set_ylabel("fault end to whole cluster (s)")
    bottom.set_xlabel("cycle")
    bottom.set_xticks(xs)
    bottom.set_xticklabels([f"{c['cycle']}\n{c['draw']['fault'][:5]}" for c in cycles], fontsize=6)
    bottom.legend(fontsize=7, loc="upper right")
    bottom.grid(alpha=0.3, axis="y")
    fig.suptitle(f"dbtools.galera soak: seed {meta['seed']}, {len(cycles)} cycles, "
                 f"{len(meta.get('violations_all', []))} violations", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "soak.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
