"""What AWX / Automation Controller does around ``ansible-runner`` for a job, reproduced for tests.

A job template of ``docs/awx/job_templates.yml`` becomes a private data directory as AWX writes one:
``project/`` (a checkout of this repository, as a project sync leaves it), ``inventory/hosts`` (an
executable printing the inventory as JSON, host variables included), ``env/extravars`` (the AWX meta
variables, the job template's extra variables and the survey answers, every string tagged
``!unsafe``), and for each custom credential a file of its injected extra variables passed with
``-e @file`` in ``env/cmdline``. The credential's injectors are rendered as AWX renders them: a sandboxed
Jinja environment whose namespace holds only the fields that have a value, so an empty field renders
as "" and is injected all the same. The job then runs through ``ansible_runner.run`` and leaves its
artifacts (stdout, every job event) under ``artifacts/<job id>/``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile

import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = pathlib.Path(__file__).resolve().parents[2]
AWX_DOCS = ROOT / "docs" / "awx"
ARGUMENT_SPECS = ROOT / "roles" / "galera_backup" / "meta" / "argument_specs.yml"


# ---------------------------------------------------------------------------------------------
# The shipped AWX objects

def job_templates() -> list:
    return yaml.safe_load((AWX_DOCS / "job_templates.yml").read_text(encoding="utf-8"))["job_templates"]


def job_template(name: str) -> dict:
    found = [t for t in job_templates() if t["name"] == name]
    assert len(found) == 1, f"docs/awx/job_templates.yml holds {len(found)} job templates named {name!r}"
    return found[0]


def survey(template: dict) -> dict | None:
    if not template.get("survey"):
        return None
    return json.loads((AWX_DOCS / template["survey"]).read_text(encoding="utf-8"))


def survey_defaults(spec: dict | None) -> dict:
    """The extra variables AWX sends when every default is accepted: each question's default that
    passes the question's own validation (a required question with an empty default is left out)."""
    answers = {}
    for question in (spec or {}).get("spec", []):
        default = question.get("default")
        if default is not None and not survey_errors(question, default):
            answers[question["variable"]] = default
    return answers


def survey_errors(question: dict, value) -> list:
    """AWX's checks of one answer (required, length or range, choices)."""
    kind, errors = question["type"], []
    if question.get("required") and value in (None, ""):
        errors.append("required")
    if kind in ("text", "textarea", "password") and isinstance(value, str):
        if not int(question.get("min", 0) or 0) <= len(value) <= int(question.get("max", 1024) or 1024):
            errors.append(f"length {len(value)} outside {question.get('min')}..{question.get('max')}")
    elif kind in ("integer", "float") and value not in (None, ""):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                (kind == "integer" and not isinstance(value, int)):
            errors.append(f"{value!r} is not an {kind}")
        elif ("min" in question and value < question["min"]) or ("max" in question and value > question["max"]):
            errors.append(f"{value} outside {question.get('min')}..{question.get('max')}")
    elif kind == "multiplechoice" and value not in (None, "") and value not in question.get("choices", []):
        errors.append(f"{value!r} is not one of the choices")
    elif kind == "multiselect" and value not in (None, ""):
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in question.get("choices", [])]
        if bad:
            errors.append(f"{bad} are not among the choices")
    return errors


def credential_type() -> dict:
    return yaml.safe_load((AWX_DOCS / "credential_type.yml").read_text(encoding="utf-8"))


def argument_specs() -> dict:
    return yaml.safe_load(ARGUMENT_SPECS.read_text(encoding="utf-8"))["argument_specs"]


# ---------------------------------------------------------------------------------------------
# Credentials and extra variables, as AWX writes them

def inject_extra_vars(cred_type: dict, inputs: dict) -> dict:
    """The extra variables a credential of ``cred_type`` with ``inputs`` injects (AWX's rules)."""
    env = ImmutableSandboxedEnvironment()
    namespace = {}
    for field in cred_type["inputs"]["fields"]:
        value = inputs.get(field["id"])
        if field.get("type") == "boolean":
            namespace[field["id"]] = bool(value)
        elif value is not None and len(value):
            namespace[field["id"]] = value
    missing = [f for f in cred_type["inputs"].get("required", []) if f not in namespace]
    assert not missing, f"AWX refuses a credential without {missing}"

    def render(node):
        if isinstance(node, dict):
            return {render(k): render(v) for k, v in node.items()}
        if isinstance(node, list):
            return [render(x) for x in node]
        return env.from_string(node).render(**namespace)

    return render(cred_type["injectors"].get("extra_vars", {}))


class _UnsafeDumper(yaml.SafeDumper):
    """AWX's safe_dump: every string is written as ``!unsafe`` (Ansible never templates it)."""

    def represent_data(self, data):
        if isinstance(data, str):
            return self.represent_scalar("!unsafe", data)
        return super().represent_data(data)


def unsafe_dump(data: dict) -> str:
    return yaml.dump(data, Dumper=_UnsafeDumper, default_flow_style=False)


def meta_vars(job_id: int, template: dict) -> dict:
    """The awx_*/tower_* variables AWX adds to every job."""
    out = {}
    for prefix in ("awx", "tower"):
        out.update({f"{prefix}_job_id": job_id, f"{prefix}_job_launch_type": "manual",
                    f"{prefix}_job_template_name": template["name"], f"{prefix}_user_name": "admin",
                    f"{prefix}_project_revision": "0" * 40})
    return out


def inventory_script(inventory: dict) -> str:
    """AWX's inventory/hosts: an executable that prints the inventory (with ``_meta.hostvars``)."""
    return "#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint(%r)\n" % json.dumps(inventory)


def write_private(path: pathlib.Path, text: str, mode: int = stat.S_IRUSR | stat.S_IWUSR) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)


# ---------------------------------------------------------------------------------------------
# A job

def project_copy(dest: pathlib.Path) -> None:
    """The project as AWX's project sync leaves it: the repository's files (no build or venv)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


class Job:
    """One AWX job of a job template: its private data directory, its run, its artifacts."""

    def __init__(self, base: pathlib.Path, job_id: int, template: dict, inventory: dict, *,
                 answers: dict | None = None, extra_vars: dict | None = None, credentials: list | None = None,
                 use_survey_defaults: bool = True):
        self.job_id, self.template = job_id, template
        self.dir = base / f"job_{job_id}"
        (self.dir / "env").mkdir(parents=True, mode=0o700)
        (self.dir / "inventory").mkdir(mode=0o700)
        project = base / "project"
        if not project.exists():
            project_copy(project)
        os.symlink(project, self.dir / "project")
        hosts = self.dir / "inventory" / "hosts"
        write_private(hosts, inventory_script(inventory), stat.S_IRWXU)

        variables = meta_vars(job_id, template)
        variables.update(template.get("extra_vars") or {})
        if use_survey_defaults:
            variables.update(survey_defaults(survey(template)))
        variables.update(answers or {})
        variables.update(extra_vars or {})
        self.extra_vars = variables
        write_private(self.dir / "env" / "extravars", unsafe_dump(variables), stat.S_IRUSR)

        args = []
        self.injected = {}
        for cred_type, inputs in credentials or []:
            injected = inject_extra_vars(cred_type, inputs)
            self.injected.update(injected)
            handle, path = tempfile.mkstemp(dir=self.dir / "env")
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(unsafe_dump(injected))
            os.chmod(path, stat.S_IRUSR)
            args += ["-e", "@" + path]
        write_private(self.dir / "env" / "cmdline", " ".join(args))
        self.runner = None

    @property
    def artifacts(self) -> pathlib.Path:
        return self.dir / "artifacts" / str(self.job_id)

    def run(self, verbosity: int | None = None, timeout: int = 1200):
        import ansible_runner  # noqa: PLC0415 (only the runner tests need it)

        self.runner = ansible_runner.run(
            private_data_dir=str(self.dir), playbook=self.template["playbook"], ident=str(self.job_id),
            verbosity=self.template.get("verbosity", 0) if verbosity is None else verbosity,
            quiet=True, timeout=timeout,
            envvars={"ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "JOB_ID": str(self.job_id),
                     "AWX_PRIVATE_DATA_DIR": str(self.dir)})
        return self

    @property
    def status(self) -> str:
        return self.runner.status

    @property
    def rc(self) -> int:
        return self.runner.rc

    @property
    def events(self) -> list:
        return list(self.runner.events)

    def stdout(self) -> str:
        return (self.artifacts / "stdout").read_text(encoding="utf-8", errors="replace")

    def failures(self) -> dict:
        """{host: msg} of every failed task result (runner_on_failed, not ignored)."""
        out = {}
        for event in self.events:
            if event.get("event") == "runner_on_failed" and not event["event_data"].get("ignore_errors"):
                data = event["event_data"]
                out[data.get("host")] = (data.get("res") or {}).get("msg", "")
        return out

    def results(self, task: str) -> dict:
        """{host: result} of the task named ``task`` (ok or failed)."""
        out = {}
        for event in self.events:
            data = event.get("event_data") or {}
            if event.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("task") == task:
                out[data.get("host")] = data.get("res") or {}
        return out


def leaks(job: Job, secrets: dict) -> list:
    """Where any of ``secrets`` ({label: text}) shows in the job's artifacts or events.

    Each secret is looked for as it is, JSON-escaped, and by its distinctive marker when it has one
    (``label`` -> ``(text, marker)``), which also finds it cut or re-quoted."""
    needles = []
    for label, value in secrets.items():
        text, marker = value if isinstance(value, tuple) else (value, None)
        forms = {text, json.dumps(text)[1:-1]}
        if marker:
            forms.add(marker)
        needles += [(label, form) for form in forms if form]
    found = []
    files = [p for p in job.artifacts.rglob("*") if p.is_file()]
    assert files, f"job {job.job_id} left no artifacts in {job.artifacts}"
    for path in files:
        content = path.read_bytes().decode("utf-8", errors="replace")
        found += [f"{label} in {path.relative_to(job.dir)}" for label, form in needles if form in content]
    for event in job.events:
        content = json.dumps(event, ensure_ascii=False)
        found += [f"{label} in event {event.get('counter')} ({event.get('event')})" for label, form in needles
                  if form in content]
    return sorted(set(found))
