"""pipelines/restore.py: an earlier run's dvc.lock entry is chosen only when DVC, given it,
finds the stage unchanged; and a step that adopts one pulls that run's outputs alone (no
run-cache transfer, no push), while a step without one keeps DVC's run-cache."""

import shutil
from pathlib import Path

import dagster as dg
import yaml

from conftest import dvc
from pipelines.resources import LOCK_ENTRY, OWN_ENTRY, RESTORED, RESTORED_FROM, DvcProject
from pipelines.restore import Earlier, load_yaml, matching, produced, repeats, spec

DVC_YAML = """\
stages:
  make:
    cmd: python3 make.py ${paths.out}
    deps: [make.py]
    params: [p.a]
    outs: ["${paths.out}/made.txt"]
  use:
    cmd: python3 use.py
    deps: ["${paths.out}/made.txt", use.py]
    params: [p.b, paths]
    outs: [used.txt]
    metrics: [{m.json: {cache: true}}]
  look:
    cmd: python3 use.py
    always_changed: true
    deps: [use.py]
    outs: [{looked.txt: {persist: true}}]
"""
PARAMS = {"p": {"a": 1, "b": [1.0e-5, 2]}, "paths": {"out": "out"}}  # DVC writes 1e-05 in dvc.lock
MAKE = "import sys, pathlib\npathlib.Path(sys.argv[1]).mkdir(exist_ok=True)\n" \
       "pathlib.Path(sys.argv[1], 'made.txt').write_text('made 1')\n"
USE = "import pathlib\npathlib.Path('used.txt').write_text(pathlib.Path('out/made.txt').read_text() + ' used')\n" \
      "pathlib.Path('m.json').write_text('{\"n\": 1}')\npathlib.Path('looked.txt').write_text('x')\n"


def toy(root: Path) -> Path:
    root.mkdir()
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "make.py").write_text(MAKE)
    (root / "use.py").write_text(USE)
    dvc(root, "init", "--no-scm", "-q")
    dvc(root, "config", "core.analytics", "false")
    dvc(root, "repro", "make", "use")
    return root


def lock(root: Path) -> dict:
    return load_yaml((root / "dvc.lock").read_text())


def agrees(root: Path, stage: str, recorded: dict) -> tuple[bool, bool]:
    """(does restore.py take ``recorded`` as a run of the stage now, does DVC: `dvc status`
    with that entry in dvc.lock finds the stage unchanged)."""
    found = spec(root, stage)
    ours = repeats(found, recorded, root, produced(lock(root), stage))
    current = lock(root)
    current["stages"][stage] = recorded
    (root / "dvc.lock").write_text(yaml.safe_dump(current, sort_keys=False))
    status = dvc(root, "status", stage).stdout
    return ours, status.strip().endswith("up to date.")


def test_an_entry_is_taken_exactly_when_dvc_finds_the_stage_unchanged(tmp_path):
    root = toy(tmp_path / "toy")
    assert "- 1e-05" in (root / "dvc.lock").read_text()  # DVC's spelling, which PyYAML alone reads as a string
    recorded = lock(root)["stages"]["use"]
    found = spec(root, "use")
    assert found.cmd == "python3 use.py" and found.deps == {"out/made.txt", "use.py"}
    assert found.outs == {"used.txt", "m.json"} and found.params == {"p.b": [1e-5, 2], "paths": {"out": "out"}}
    assert spec(root, "make").cmd == "python3 make.py out" and spec(root, "look").always_changed
    assert agrees(root, "use", recorded) == (True, True)

    # Each change alone: restore.py refuses the entry, and DVC would rerun the stage.
    (root / "use.py").write_text(USE + "# changed\n")
    assert agrees(root, "use", recorded) == (False, False)
    (root / "use.py").write_text(USE)
    assert agrees(root, "use", recorded) == (True, True)

    (root / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "p": {"a": 1, "b": [1, 3]}}))
    assert agrees(root, "use", recorded) == (False, False)
    # p.a: a key the stage does not read
    (root / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "p": {"a": 2, "b": [1.0e-5, 2]}}))
    assert agrees(root, "use", recorded) == (True, True)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))

    other = {**recorded, "deps": [dict(dep, md5="0" * 32) if dep["path"] == "out/made.txt" else dep
                                  for dep in recorded["deps"]]}  # another upstream output
    assert agrees(root, "use", other) == (False, False)
    assert agrees(root, "use", {**recorded, "cmd": "python3 use.py --other"}) == (False, False)

    (root / "dvc.yaml").write_text(DVC_YAML.replace('deps: ["${paths.out}/made.txt", use.py]',
                                                    'deps: ["${paths.out}/made.txt", use.py, make.py]'))
    assert agrees(root, "use", recorded) == (False, False)
    (root / "dvc.yaml").write_text(DVC_YAML)
    assert agrees(root, "use", recorded) == (True, True)

    # An older hash kind, a stage this module cannot read whole: left to DVC.
    older = {**recorded, "deps": [{k: v for k, v in dep.items() if k != "hash"} for dep in recorded["deps"]]}
    assert not repeats(found, older, root, produced(lock(root), "use"))
    (root / "dvc.yaml").write_text("vars: [params.yaml]\n" + DVC_YAML)
    assert spec(root, "use") is None
    (root / "dvc.yaml").write_text(DVC_YAML.replace("params: [p.b, paths]", "params: [{other.yaml: [x]}]"))
    assert spec(root, "use") is None


def test_the_newest_matching_entry_is_chosen_and_code_is_hashed_once(tmp_path, monkeypatch):
    root = toy(tmp_path / "toy")
    recorded = lock(root)["stages"]["use"]
    stale = {**recorded, "params": {"params.yaml": {"p.b": [9], "paths": {"out": "out"}}}}
    older_match = Earlier("run-1", recorded)
    from pipelines import restore
    reads = []
    real = restore._md5
    monkeypatch.setattr(restore, "_md5", lambda path: reads.append(path) or real(path))
    chosen = matching(spec(root, "use"), root, lock(root), "use",
                      [Earlier("run-3", stale), older_match, Earlier("run-0", recorded)])
    assert chosen is older_match
    assert reads == [root / "use.py"]
    assert matching(spec(root, "use"), root, lock(root), "use", [Earlier("run-3", stale)]) is None


FAKE_DVC = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  repro) case "$*" in *--no-run-cache*) echo "Pulling data for stage: 'use'";; *) echo "Running stage 'use':";; esac;;
  push) echo "1 file pushed";;
esac
exit 0
"""


def test_a_step_that_adopts_an_entry_pulls_its_outputs_only_and_pushes_nothing(tmp_path):
    root = toy(tmp_path / "toy")
    recorded = lock(root)["stages"]["use"]
    log = tmp_path / "dvc.log"
    fake = tmp_path / "fake-dvc"
    fake.write_text(FAKE_DVC.format(log=log))
    fake.chmod(0o755)
    project = DvcProject(project_dir=str(root), dvc=str(fake), remote="store")
    stale = {**recorded, "cmd": "python3 use.py --old"}

    def step(earlier):
        @dg.asset(name="use")
        def use(context: dg.AssetExecutionContext, dvc: DvcProject) -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata=dvc.repro(context, "use", earlier=earlier).metadata())

        result = dg.materialize([use], resources={"dvc": project}, instance=dg.DagsterInstance.ephemeral())
        [event] = result.get_asset_materialization_events()
        return event.step_materialization_data.materialization.metadata

    shutil.copy(root / "dvc.lock", tmp_path / "lock")
    current = lock(root)
    del current["stages"]["use"]  # a fresh clone knows only the upstream entries
    (root / "dvc.lock").write_text(yaml.safe_dump(current, sort_keys=False))
    made = step([Earlier("run-7", stale), Earlier("run-5", recorded)])
    calls = log.read_text().splitlines()
    assert calls[1:] == ["repro --single-item use --pull --no-run-cache"], calls  # after `remote default`
    assert made["dvc stage"].value == RESTORED and made[RESTORED_FROM].value == "run run-5"
    assert made["dvc pushed files"].value == 0 and made[LOCK_ENTRY].value["entry"] == recorded
    assert lock(root)["stages"]["use"] == recorded

    # The checkout's own entry repeats the stage: DVC decides from it, without the run-cache;
    # it may never have been pushed (a dvc.lock from git), so the outputs are pushed.
    log.unlink()
    made = step([Earlier("run-7", stale)])
    assert log.read_text().splitlines() == ["repro --single-item use --pull --no-run-cache",
                                            "push --run-cache -r store use"]
    assert made[RESTORED_FROM].value == OWN_ENTRY and lock(root)["stages"]["use"] == recorded

    # An own entry of other inputs is dropped, and its outputs go (DVC would take the missing
    # input as unchanged and keep them); nothing repeats the stage: DVC's run-cache, then a push.
    current = lock(root)
    current["stages"]["use"] = stale
    (root / "dvc.lock").write_text(yaml.safe_dump(current, sort_keys=False))
    log.unlink()
    made = step([Earlier("run-7", stale)])
    assert log.read_text().splitlines() == ["repro --single-item use --pull", "push --run-cache -r store use"]
    assert made["dvc stage"].value == "ran" and made["dvc pushed files"].value == 1
    assert not (root / "used.txt").exists() and "use" not in lock(root)["stages"]  # the fake dvc wrote nothing
