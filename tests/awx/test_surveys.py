"""Every survey question of the shipped job templates sets a variable that exists, with the type and
choices the role's argument spec (or the playbook) gives it; no cluster needed."""

from __future__ import annotations

import copy
import re

import pytest

import awxsim

# AWX survey types and the argument spec types each may feed.
SURVEY_TYPES = {
    "text": {"str", "path"},
    "textarea": {"str"},
    "password": {"str"},
    "integer": {"int"},
    "float": {"float"},
    "multiplechoice": {"str"},
    "multiselect": {"list"},
}


def survey_problems(template: dict, spec: dict, argspecs: dict, playbook_text: str) -> list:
    """What is wrong with ``spec`` (a survey) for ``template``; empty when nothing is."""
    problems = []
    entry = template.get("role_entry_point")
    options = argspecs[entry]["options"] if entry else {}
    playbook_vars = set(template.get("playbook_variables") or [])
    seen = set()
    for q in spec["spec"]:
        var, kind = q["variable"], q["type"]
        where = f"{template['name']}: question {q.get('question_name')!r} ({var})"
        if var in seen:
            problems.append(f"{where}: asked twice")
        seen.add(var)
        if kind not in SURVEY_TYPES:
            problems.append(f"{where}: unknown survey type {kind}")
            continue
        for error in awxsim.survey_errors(q, q["default"]) if "default" in q else []:
            problems.append(f"{where}: its default {q['default']!r} fails AWX's own check: {error}")
        if var in playbook_vars:
            # Read by the playbook itself: it must be there, as a variable.
            if not re.search(r"\b" + re.escape(var) + r"\b", playbook_text):
                problems.append(f"{where}: listed in playbook_variables but {template['playbook']} never reads it")
            continue
        option = options.get(var)
        if option is None:
            problems.append(f"{where}: not an option of the role's entry point {entry!r} nor a playbook variable")
            continue
        if option.get("type", "str") not in SURVEY_TYPES[kind]:
            problems.append(f"{where}: survey type {kind} but the argument spec says {option.get('type', 'str')}")
        if kind in ("multiplechoice", "multiselect") or option.get("choices"):
            if sorted(map(str, q.get("choices") or [])) != sorted(map(str, option.get("choices") or [])):
                problems.append(f"{where}: choices {q.get('choices')} differ from the argument spec's "
                                f"{option.get('choices')}")
        if "default" in q and "default" in option and q["default"] != option["default"] and not q.get("required"):
            # An optional question left empty must mean what the role does without it.
            problems.append(f"{where}: optional, but its default {q['default']!r} differs from the role's "
                            f"{option['default']!r}")
    return problems


TEMPLATES = awxsim.job_templates()


@pytest.mark.parametrize("template", TEMPLATES, ids=[t["name"] for t in TEMPLATES])
def test_template_names_a_playbook_and_credential_types_that_exist(template):
    assert (awxsim.ROOT / template["playbook"]).is_file(), template["playbook"]
    assert set(template.get("credential_types") or []) <= {"Machine", "Galera database login", "Vault"}
    if template.get("role_entry_point"):
        assert template["role_entry_point"] in awxsim.argument_specs()


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t.get("survey")],
                         ids=[t["name"] for t in TEMPLATES if t.get("survey")])
def test_survey_matches_the_argument_spec(template):
    spec = awxsim.survey(template)
    playbook_text = (awxsim.ROOT / template["playbook"]).read_text(encoding="utf-8")
    assert survey_problems(template, spec, awxsim.argument_specs(), playbook_text) == []


def test_every_survey_file_belongs_to_a_template():
    used = {t["survey"] for t in TEMPLATES if t.get("survey")}
    on_disk = {p.name for p in awxsim.AWX_DOCS.glob("*_survey.json")}
    assert on_disk == used


# The checker itself: each kind of mistake is found (a check that cannot fail is a defect).
def _mutated(change):
    template = awxsim.job_template("Galera backup")
    spec = copy.deepcopy(awxsim.survey(template))
    change(spec["spec"])
    playbook_text = (awxsim.ROOT / template["playbook"]).read_text(encoding="utf-8")
    return survey_problems(template, spec, awxsim.argument_specs(), playbook_text)


def _question(spec, var):
    return next(q for q in spec if q["variable"] == var)


@pytest.mark.parametrize("change, expected", [
    (lambda s: _question(s, "galera_backup_method").update(choices=["auto", "mariabackup", "xtrabackup"]),
     "choices"),
    (lambda s: _question(s, "galera_backup_method")["choices"].append("$(touch /tmp/pwned)"), "choices"),
    (lambda s: _question(s, "galera_backup_retention").update(type="text"), "argument spec says int"),
    (lambda s: _question(s, "galera_backup_throttle").update(type="float"), "argument spec says int"),
    (lambda s: _question(s, "galera_backup_verify").update(variable="galera_backup_verifiy"), "not an option"),
    (lambda s: s.append({"question_name": "x", "variable": "galera_backup_login_password ", "type": "password",
                         "required": False, "default": ""}), "not an option"),
    (lambda s: _question(s, "galera_backup_retention").update(default=0), "fails AWX's own check"),
    (lambda s: _question(s, "galera_backup_type").update(default="differential"), "not one of the choices"),
    (lambda s: _question(s, "galera_backup_node").update(default="galera-node1"), "differs from the role's"),
    (lambda s: s.append(dict(_question(s, "galera_backup_dir"))), "asked twice"),
])
def test_the_checker_finds_each_mistake(change, expected):
    problems = _mutated(change)
    assert any(expected in p for p in problems), problems


def test_the_checker_finds_a_playbook_variable_the_playbook_never_reads():
    template = dict(awxsim.job_template("Galera backup"), playbook_variables=["galera_hosts", "galera_cluster"])
    spec = awxsim.survey(template)
    spec["spec"].append({"question_name": "c", "variable": "galera_cluster", "type": "text", "required": False,
                         "default": "", "min": 0, "max": 10})
    playbook_text = (awxsim.ROOT / template["playbook"]).read_text(encoding="utf-8")
    problems = survey_problems(template, spec, awxsim.argument_specs(), playbook_text)
    assert any("never reads it" in p for p in problems), problems
