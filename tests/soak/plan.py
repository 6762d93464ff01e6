"""The soak's draws (pure): what each cycle backs up, which fault it injects, at which moment.

Everything a cycle does is drawn from the soak's seed and the cycle's number alone, so one cycle can
be replayed without the cycles before it (``scripts/soak --seed S --only 17``). Faults come from a
shuffled deck: each block of ``len(faults)`` cycles holds every enabled fault once, in a random order,
so a short soak still meets different faults and a 50-cycle soak meets each one five times or more.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

NODES = ("galera-node1", "galera-node2", "galera-node3")
WRITER = "galera-node1"  # sysbench writes here
BACKUP_NODES = ("galera-node2", "galera-node3")

FAULTS = (
    "none",              # a clean cycle
    "controller_kill",   # SIGKILL to ansible-playbook and its children
    "tool_kill",         # SIGKILL to the backup tool and its pipeline on the node
    "network_cut",       # the backup node's network cut from the others for 5-30 s
    "member_restart",    # another member stopped and started again
    "disk_full",         # the backup directory's filesystem filled up
    "dba_desync",        # a DBA's wsrep_desync=ON on another node for a while
    "second_run",        # a second run of the playbook started at once
    "applier_freeze",    # the backup node's applier thread frozen (ptrace) for a while
)

# The phases of a run, in order, as the soak sees them from outside (the lease and the runner's state file).
PHASES = ("before_desync", "tool", "verify", "drain")
SEEN_PHASES = PHASES + ("after",)
# Where a fault may be injected: the tool kill needs a tool (the backup or the verification's pipeline).
FAULT_PHASES = {fault: PHASES for fault in FAULTS}
FAULT_PHASES["none"] = ()
FAULT_PHASES["tool_kill"] = ("tool", "verify")
# How long after a phase began the fault may come (s): the draw is uniform in [0, this]. A phase lasts as
# long as the cycle's draws make it (measured on the test cluster): the bound follows them, so a moment
# late in a long phase can be drawn and a short phase is still hit more often than overshot.
PHASE_OFFSET = {"before_desync": 20.0, "tool": 3.0, "verify": 1.5, "drain": 0.3}


def offset_bound(phase: str, method: str, verify: str, throttle: int) -> float:
    if phase == "tool" and method == "mariabackup":
        return 15.0 if throttle else 6.0
    if phase == "verify" and verify == "restore":
        return 15.0
    if phase == "verify" and verify == "prepare":
        return 6.0
    return PHASE_OFFSET[phase]


@dataclass
class Cycle:
    """One cycle's draws."""

    index: int
    node: str
    method: str
    type: str
    verify: str
    encrypt: bool
    compress: str
    throttle: int
    verbosity: str
    fault: str
    phase: str | None
    offset: float
    params: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def role_vars(self) -> dict:
        """The galera_backup_* variables of this cycle's run (no secrets: those come from their own file)."""
        return dict(galera_backup_node=self.node, galera_backup_method=self.method, galera_backup_type=self.type,
                    galera_backup_verify=self.verify, galera_backup_encrypt=self.encrypt,
                    galera_backup_compress=self.compress, galera_backup_throttle=self.throttle)

    def describe(self) -> str:
        what = f"{self.method} {self.type}, verify {self.verify}"
        if self.encrypt:
            what += ", encrypted"
        if self.compress != "zstd":
            what += f", compress {self.compress}"
        if self.throttle:
            what += f", throttle {self.throttle}"
        return f"{self.node}: {what}"


def deck(seed, faults, count: int) -> list:
    """The fault of each of ``count`` cycles: blocks of every fault once, each block shuffled."""
    faults = list(faults)
    if not faults:
        raise ValueError("no fault enabled")
    rng = random.Random(f"soak-deck/{seed}/{','.join(faults)}")
    out = []
    while len(out) < count:
        block = list(faults)
        rng.shuffle(block)
        out.extend(block)
    return out[:count]


def fault_params(fault: str, rng: random.Random, node: str) -> dict:
    """What a fault needs besides its moment (durations, the other node), drawn from the cycle's rng."""
    others = [n for n in NODES if n != node]
    if fault == "network_cut":
        return dict(seconds=round(rng.uniform(5, 30), 1))
    if fault == "member_restart":
        return dict(member=rng.choice(others), down_seconds=round(rng.uniform(2, 12), 1))
    if fault == "disk_full":
        return dict(hold_seconds=round(rng.uniform(5, 30), 1))
    if fault == "dba_desync":
        return dict(member=rng.choice(others), seconds=round(rng.uniform(5, 20), 1))
    if fault == "second_run":
        return dict(node=rng.choice(BACKUP_NODES))
    if fault == "applier_freeze":
        return dict(seconds=round(rng.uniform(5, 20), 1))
    return {}


def draw(seed, index: int, faults) -> Cycle:
    """Cycle ``index`` (1-based) of the soak with ``seed`` and the enabled ``faults`` (in FAULTS order)."""
    faults = [f for f in FAULTS if f in set(faults)]
    fault = deck(seed, faults, index)[index - 1]
    rng = random.Random(f"soak-cycle/{seed}/{index}")
    node = rng.choice(BACKUP_NODES)
    method = rng.choices(("mariabackup", "mysqldump", "mydumper"), weights=(6, 3, 2))[0]
    physical = method == "mariabackup"
    backup_type = rng.choice(("full", "incremental")) if physical else "full"
    verify = rng.choice(("checksum", "prepare", "restore") if physical else ("checksum", "restore"))
    encrypt = method != "mydumper" and rng.random() < 0.5
    compress = "zstd" if encrypt or rng.random() < 0.8 else "none"
    throttle = rng.choice((0, 0, 25, 50)) if physical else 0
    verbosity = rng.choices(("", "-v", "-vvv"), weights=(2, 2, 1))[0]
    phases = FAULT_PHASES[fault]
    phase = rng.choice(phases) if phases else None
    offset = round(rng.uniform(0, offset_bound(phase, method, verify, throttle)), 2) if phase else 0.0
    return Cycle(index=index, node=node, method=method, type=backup_type, verify=verify, encrypt=encrypt,
                 compress=compress, throttle=throttle, verbosity=verbosity, fault=fault, phase=phase, offset=offset,
                 params=fault_params(fault, rng, node))


def classify_phase(lease_owner_ours: bool, node_desynced: bool | None, state: dict | None) -> str:
    """Which phase a run is in, from what the soak sees: whether the lease is this run's, whether the node
    has wsrep_desync=ON, and the runner's state file (None before the runner started)."""
    if state and state.get("done"):
        return "drain" if lease_owner_ours or node_desynced else "after"
    if not state:
        # Desynced under this run's lease with no runner yet: it is being started.
        return "tool" if lease_owner_ours else "before_desync"
    step = str(state.get("step") or "")
    if step in ("starting", "listing tables") or step.startswith("running "):
        return "tool"
    return "verify"  # checking it stayed ours, checksumming, "verify: ..."


def phase_order(phase: str) -> int:
    return SEEN_PHASES.index(phase)
