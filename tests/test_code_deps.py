"""An edit to a byol_core module reruns, under the real ``dvc``, exactly the stages that
import it: no stage is skipped whose code changed, and none reruns for code it never runs.

A copy of the checkout (the files git tracks or would track, dvc.lock among them) gets a
comment line appended to every byol_core module at once; one ``dvc status`` then names,
per stage, the deps that changed. dvc.lock may be older than dvc.yaml: a dep it does not
know yet shows as changed too, which is what an edit would do, so only which stages name
each module is compared. The other side is the import probe of scripts/code_deps.py (import
the CLI, load the stage, then list ``sys.modules``), which reads nothing of dvc.yaml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from byol_core import schema, stages
from conftest import CODE_DEPS, ROOT, dvc, git


def _imported_files() -> dict[str, list[str]]:
    """Stage -> the byol_core files it imports (scripts/code_deps.py's probe)."""
    return CODE_DEPS.imported_files(list(stages.STAGES))


def _copy_checkout(root: Path) -> Path:
    """The project's files as git sees them (tracked, and new ones it does not ignore) in a
    new git repository at ``root``: no outputs, no data, no DVC cache."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():  # a tracked file deleted in the work tree is left out
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, root / rel)
    assert (root / "dvc.lock").is_file() and (root / "dvc.yaml").is_file()
    git(root, "init", "-q")
    return root


def _rerun_by_module(root: Path) -> dict[str, set[str]]:
    """Each byol_core file that is a module or a dep -> the stages whose changed deps name it."""
    rerun: dict[str, set[str]] = {p.relative_to(root).as_posix(): set() for p in (root / "byol_core").rglob("*.py")}
    for stage, entries in json.loads(dvc(root, "status", "--json").stdout).items():
        for entry in entries:
            changed = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            for dep in changed:  # "modified", "new", "deleted": any of them reruns the stage
                if dep.startswith("byol_core/"):
                    rerun.setdefault(dep, set()).add(stage)
    return rerun


def _mismatches(rerun: dict[str, set[str]], imported: dict[str, list[str]]) -> dict[str, str]:
    modules = set(rerun) | {f for files in imported.values() for f in files}
    found = {}
    for module in sorted(modules):
        importers = {stage for stage, files in imported.items() if module in files}
        if rerun.get(module, set()) != importers:
            found[module] = f"dvc reruns {sorted(rerun.get(module, set()))}, imported by {sorted(importers)}"
    return found


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """(the copy, module -> stages dvc reruns after every module was edited, stage -> its files)."""
    root = _copy_checkout(tmp_path_factory.mktemp("code_deps") / "project")
    for module in (root / "byol_core").rglob("*.py"):
        with open(module, "a") as handle:
            handle.write("# an edit\n")
    return root, _rerun_by_module(root), _imported_files()


def test_an_edit_to_a_module_reruns_exactly_the_stages_that_import_it(edited):
    _, rerun, imported = edited
    assert _mismatches(rerun, imported) == {}
    assert set().union(*rerun.values()) == set(stages.STAGES)  # the status was read: every stage has code


def test_the_probe_and_the_unread_schema_rerun_no_stage_that_does_not_run_them(edited):
    _, rerun, _ = edited
    assert rerun["byol_core/evaluate.py"] == {"evaluate"}  # the linear probe: not pretrain's code
    # Each section's schema reruns the stages that read the section, and checks no stage.
    assert rerun["byol_core/schema/checks.py"] == set()
    assert rerun["byol_core/config.py"] == set()  # the whole file's checks only refuse bad params
    assert rerun["byol_core/schema/data.py"] == {"scan", "ingest"}  # it names the sources, for both
    assert rerun["byol_core/data/sources/__init__.py"] == {"ingest"}  # the readers' loader: not the scan's code
    assert rerun["byol_core/data/scan.py"] == {"scan", "ingest"}  # ingest holds the folder to the listing
    assert rerun["byol_core/data/sources/imagefolder.py"] == {"ingest"}  # the readers are not the scan's code
    assert rerun["byol_core/schema/pretrain.py"] == {"pretrain"}
    assert rerun["byol_core/schema/probe.py"] == rerun["byol_core/schema/run.py"] == {"pretrain", "evaluate"}
    assert rerun["byol_core/schema/export.py"] == {"export"}
    assert rerun["byol_core/schema/embed.py"] == {"embed"}
    assert rerun["byol_core/schema/paths.py"] == set(stages.STAGES)


def test_each_stage_holds_the_schema_of_the_sections_it_reads_and_no_other(edited):
    """What a stage reads is its view (dvc.yaml's params: test_stages.py): the view's module
    is the stage's code, and so is the schema of each section the view names, and no other."""
    _, _, imported = edited
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, files in imported.items():
        view = stages.load(name).VIEW
        assert declared[name]["params"] == list(view.keys()), name
        assert view.__module__.replace(".", "/") + ".py" in files, name
        held = {f.removeprefix("byol_core/schema/").removesuffix(".py") for f in files if f.startswith("byol_core/schema/")}
        read = {schema.SECTIONS[key].partition(".")[0] for key in view.model_fields}
        assert held == read | {"__init__", "base"}, name


def test_a_dep_the_stage_does_not_import_is_found(edited):
    """The same comparison on a dvc.yaml that lists the linear probe as pretrain's code."""
    root, rerun, imported = edited
    text = (root / "dvc.yaml").read_text()
    wrong = CODE_DEPS.rewrite(text, "pretrain", sorted(imported["pretrain"] + ["byol_core/evaluate.py"]))
    (root / "dvc.yaml").write_text(wrong)
    assert _mismatches(_rerun_by_module(root), imported) == {
        "byol_core/evaluate.py": "dvc reruns ['evaluate', 'pretrain'], imported by ['evaluate']"}
