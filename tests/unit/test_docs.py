# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The operator and contributor docs (README.md, CONTRIBUTING.md, docs/*.md) against the code.

- Every relative link and image resolves to a file or directory inside the repository, and an
  ``#anchor`` into a Markdown file names one of its headings (GitHub's slugs). http(s) and mailto
  links are not fetched.
- README.md and docs/ link nothing that galaxy.yml's build_ignore leaves out of the published
  collection (CONTRIBUTING.md may: it is about the repository).
- Every ``galera_*`` name the docs mention, in code spans, code blocks or prose, is a role option
  of an argument spec, a variable a playbook or a role default reads, a module, a module option or
  a role; ``dbtools.galera.<name>`` names a module, role, playbook, filter or action group. A typo
  such as ``galera_backup_retenton`` fails.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Names of ours that are not variables, modules or roles, and names of other software that look like ours.
OUTSIDE = frozenset((
    "galera_new_cluster",  # MariaDB's script that bootstraps a new cluster
))

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?^ {0,3}\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A name of ours: not part of a longer word, a path, a dotted name or a hyphenated name. A trailing
# "_*" makes it a prefix ("galera_backup_login_*").
NAME = re.compile(r"(?<![\w./-])(galera_[A-Za-z0-9_]*)(?![\w-])(\*?)")
FQCN = re.compile(r"(?<![\w.-])dbtools\.galera\.([A-Za-z0-9_]+)")
JINJA = re.compile(r"\{\{(.*?)\}\}", re.S)


def doc_files(root: Path = ROOT) -> list:
    return [root / "README.md", root / "CONTRIBUTING.md"] + sorted((root / "docs").glob("*.md"))


# ---------------------------------------------------------------------------------------------
# Links

def without_code(text: str) -> str:
    """The text with fenced code blocks and code spans blanked out (links in code are not links)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def extract_links(text: str) -> list:
    prose = without_code(text)
    return (INLINE_LINK.findall(prose) + REFERENCE_DEF.findall(prose) + HTML_LINK.findall(prose))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation other than '-' and
    '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(text: str) -> set:
    found, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def build_ignored(rel: str, patterns: list) -> bool:
    """Whether ``ansible-galaxy collection build`` leaves ``rel`` (relative to the root) out."""
    parts = Path(rel).parts
    return any(fnmatch.fnmatch("/".join(parts[:i]), p) or fnmatch.fnmatch(parts[i - 1], p)
               for p in patterns for i in range(1, len(parts) + 1))


def link_problems(doc: Path, root: Path, ignored: list | None = None) -> list:
    """What is wrong with the links of ``doc``; ``ignored``: build_ignore patterns the targets must avoid."""
    text = doc.read_text(encoding="utf-8")
    problems = []
    for target in extract_links(text):
        if SCHEME.match(target):
            continue  # http(s), mailto: not fetched
        path_text, _sep, anchor = target.partition("#")
        path = (doc.parent / path_text).resolve() if path_text else doc.resolve()
        where = f"{doc.relative_to(root)}: link {target!r}"
        try:
            rel = path.relative_to(root.resolve())
        except ValueError:
            problems.append(f"{where} points outside the repository")
            continue
        if not path.exists():
            problems.append(f"{where}: {rel} does not exist")
            continue
        if ignored and build_ignored(rel.as_posix(), ignored):
            problems.append(f"{where}: {rel} is left out of the published collection (galaxy.yml build_ignore)")
        if anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{where}: {rel} has no heading with the anchor #{anchor}")
    return problems


# ---------------------------------------------------------------------------------------------
# Names

def extract_names(text: str) -> list:
    """``(name, is_prefix)`` of every galera_* name in the text (code, code blocks and prose)."""
    text = re.sub(r"\b(?:https?|mailto):\S+", " ", text)
    return [(name, bool(star)) for name, star in NAME.findall(text)]


def extract_fqcns(text: str) -> list:
    return FQCN.findall(text)


def _options(spec) -> set:
    """Option names of an argument spec or DOCUMENTATION options, with their suboptions."""
    names = set()
    for name, option in (spec or {}).items():
        names.add(name)
        if isinstance(option, dict):
            names |= _options(option.get("options") or option.get("suboptions"))
    return names


def _module_doc(path: Path) -> dict:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DOCUMENTATION" for t in node.targets):
            try:
                return yaml.safe_load(ast.literal_eval(node.value)) or {}
            except yaml.YAMLError as exc:
                raise AssertionError(f"{path.name}: DOCUMENTATION is not valid YAML (ansible-doc fails too): {exc}") from exc
    return {}


def _read_names(text: str) -> set:
    return {m.group(1) for m in NAME.finditer(text)}


def collection_names(root: Path = ROOT) -> dict:
    """What the collection defines, from its files: ``names`` (galera_* names docs may use) and
    ``objects`` (what ``dbtools.galera.<x>`` may name)."""
    names = set(OUTSIDE)
    objects = set()
    for spec_file in root.glob("roles/*/meta/argument_specs.yml"):
        role = spec_file.parents[1].name
        names.add(role)
        objects.add(role)
        for entry in (yaml.safe_load(spec_file.read_text(encoding="utf-8"))["argument_specs"] or {}).values():
            names |= _options(entry.get("options"))
    for defaults in root.glob("roles/*/defaults/main.yml"):
        # The variables a role's defaults read (galera_login_host, ...), not the ones they set.
        for expression in JINJA.findall(defaults.read_text(encoding="utf-8")):
            names |= _read_names(expression)
    for playbook in root.glob("playbooks/*.yml"):
        objects.add(playbook.stem)
        code = "\n".join(line for line in playbook.read_text(encoding="utf-8").splitlines()
                         if not line.lstrip().startswith("#"))
        names |= _read_names(code)
    for module in root.glob("plugins/modules/*.py"):
        names.add(module.stem)
        objects.add(module.stem)
        names |= _options(_module_doc(module).get("options"))
    for plugin in root.glob("plugins/filter/*"):
        if plugin.suffix in (".py", ".yml"):
            objects.add(plugin.stem)
    # The Prometheus metrics the role writes (their families in _metrics.py), which docs show.
    metrics = (root / "plugins" / "module_utils" / "_metrics.py").read_text(encoding="utf-8")
    prefix = re.search(r'^PREFIX = "([a-z_]+)"', metrics, re.M).group(1)
    names |= {prefix + family for family in re.findall(r'Family\(\s*"([a-z0-9_]+)"', metrics)}
    runtime = yaml.safe_load((root / "meta" / "runtime.yml").read_text(encoding="utf-8")) or {}
    objects |= set(runtime.get("action_groups") or {})
    return dict(names=names, objects=objects)


def name_problems(text: str, known: dict) -> list:
    problems = []
    for name, prefix in extract_names(text):
        if prefix and name.endswith("_"):
            if not any(k.startswith(name) for k in known["names"]):
                problems.append(f"no variable starts with {name}*")
        elif name not in known["names"]:
            problems.append(f"{name} is no role option, playbook or role-default variable, module or module option")
    for name in extract_fqcns(text):
        if name not in known["objects"]:
            problems.append(f"dbtools.galera.{name} is no module, role, playbook, filter or action group")
    return problems


# ---------------------------------------------------------------------------------------------
# The docs of this repository

@pytest.fixture(name="known", scope="module")
def fixture_known():
    return collection_names(ROOT)


@pytest.fixture(name="build_ignore", scope="module")
def fixture_build_ignore():
    return yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))["build_ignore"]


def test_the_docs_exist():
    names = [p.relative_to(ROOT).as_posix() for p in doc_files()]
    for expected in ("README.md", "CONTRIBUTING.md", "docs/how-it-works.md", "docs/backup.md", "docs/restore.md",
                     "docs/awx.md", "docs/monitoring.md", "docs/benchmark.md", "docs/safety.md"):
        assert expected in names and (ROOT / expected).is_file(), expected


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_inside_the_repository(doc, build_ignore):
    published = doc.name != "CONTRIBUTING.md"
    assert link_problems(doc, ROOT, build_ignore if published else None) == []


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_galera_name_exists(doc, known):
    assert name_problems(doc.read_text(encoding="utf-8"), known) == []


def test_the_known_names_come_from_the_code(known):
    # A checker that knew nothing (or everything) could not fail: prove it read each source.
    assert {"galera_backup_retention", "galera_backup_restore_datadir"} <= known["names"]  # argument specs
    assert {"galera_hosts", "galera_node", "galera_owner", "galera_freshness_max_age"} <= known["names"]  # playbooks
    assert "galera_login_host" in known["names"]  # read by the role's defaults only
    assert {"galera_desync", "watchdog_max_hold", "galera_backup"} <= known["names"]  # modules, options, roles
    assert {"backup", "galera_desync", "galera_backup", "backup_plan", "galera"} <= known["objects"]
    assert "galera_backup_retenton" not in known["names"]
    assert "galera_status_sample" not in known["names"]


# ---------------------------------------------------------------------------------------------
# The checker itself

KNOWN = dict(names={"galera_backup", "galera_backup_retention", "galera_backup_login_user", "galera_hosts",
                    "galera_desync"},
             objects={"galera_desync", "backup", "galera"})


@pytest.mark.parametrize("text, expected", [
    ("Keep `galera_backup_retenton` backups.", ["galera_backup_retenton is no role option"]),
    ("```sh\nansible-playbook dbtools.galera.backup -e galera_backup_retenton=3\n```\n", ["galera_backup_retenton"]),
    ("-e galera_host=db1 in prose", ["galera_host is"]),
    ("`galera_backup_logon_*` variables", ["no variable starts with galera_backup_logon_*"]),
    ("`dbtools.galera.galera_desinc`", ["dbtools.galera.galera_desinc is no module"]),
    ("`galera_backup_retention_days`", ["galera_backup_retention_days is"]),
])
def test_a_misspelt_name_fails(text, expected):
    problems = name_problems(text, KNOWN)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem


@pytest.mark.parametrize("text", [
    "`galera_backup_retention`, `galera_hosts` and the `galera_backup` role",
    "`galera_backup_login_*` and `galera_backup_retention`/`galera_hosts`",
    "`dbtools.galera.galera_desync`, `dbtools.galera.backup`, `group/dbtools.galera.galera`",
    # paths, other people's names, URLs, hyphenated and longer words are not our names
    "`tests/bench/galera_bench.py`, `vault_galera_backup_key`, `_galera_backup_plan`, `dbtools_galera.desync_lease`",
    "`galera-node1`, `galera_new_cluster`, https://example.com/galera_backup_retenton, `dbtools-galera`",
])
def test_correct_names_and_other_words_pass(text):
    assert name_problems(text, dict(KNOWN, names=KNOWN["names"] | OUTSIDE)) == []


def test_extract_links_finds_links_images_and_references_but_not_code():
    text = ("See [a](docs/a.md), ![pic](docs/p.png \"title\") and [b][ref].\n\n[ref]: docs/b.md\n"
            "`[not](a-link.md)`\n```md\n[nor](this.md)\n```\n<img src=\"docs/c.png\">\n"
            "[nested [brackets]](docs/d.md#anchor)\n")
    assert sorted(extract_links(text)) == ["docs/a.md", "docs/b.md", "docs/c.png", "docs/d.md#anchor", "docs/p.png"]


@pytest.mark.parametrize("heading, expected", [
    ("Grants", "grants"),
    ("`min_cluster_size` means different things", "min_cluster_size-means-different-things"),
    ("Safety: what the collection guarantees", "safety-what-the-collection-guarantees"),
    ("Install, upgrade, pin", "install-upgrade-pin"),
    ("AWX / Automation Controller", "awx--automation-controller"),
    ("[Retention](x.md) and **cleanup**", "retention-and-cleanup"),
])
def test_slug_is_githubs(heading, expected):
    assert slug(heading) == expected


def test_a_broken_or_escaping_link_fails(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "docs" / "b.md").write_text("# Title\n\n## Grants\n", encoding="utf-8")
    (root / "tests" / "t.py").write_text("", encoding="utf-8")
    (tmp_path / "outside.md").write_text("", encoding="utf-8")
    doc = root / "README.md"
    doc.write_text("[ok](docs/b.md#grants) [self](#top) [web](https://example.com/x) [dir](docs/)\n"
                   "[missing](docs/nope.md) [out](../outside.md) [anchor](docs/b.md#grant)\n"
                   "[tests](tests/t.py)\n\n# Top\n", encoding="utf-8")
    problems = link_problems(doc, root, ["tests", "*.tar.gz"])
    assert len(problems) == 4, problems
    assert "docs/nope.md does not exist" in problems[0]
    assert "points outside the repository" in problems[1]
    assert "no heading with the anchor #grant" in problems[2]
    assert "left out of the published collection" in problems[3]
    assert link_problems(doc, root, None)[3:] == []  # CONTRIBUTING.md may link the harness


@pytest.mark.parametrize("rel, ignored", [
    ("tests/unit/test_docs.py", True), ("scripts/test", True), ("extensions/molecule/config.yml", True),
    ("dbtools-galera-0.3.0.tar.gz", True), ("docs/awx/backup_survey.json", False), ("docs/cron/galera-backup", False),
    ("meta/runtime.yml", False), ("bindep.txt", False),
])
def test_build_ignored_follows_galaxy_yml(rel, ignored, build_ignore):
    assert build_ignored(rel, build_ignore) is ignored


def test_the_repository_root_is_found():
    assert (ROOT / "galaxy.yml").is_file() and os.path.isdir(ROOT / "playbooks")


def test_metric_names_come_from_the_metrics_code(known):
    assert "galera_backup_last_success_timestamp_seconds" in known["names"]
    assert name_problems("`galera_backup_last_sucess_timestamp_seconds`", known) != []
