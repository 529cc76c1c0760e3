"""Rewrite each dvc.yaml stage's ``byol_core/`` deps to the files the stage really imports,
and its ``params:`` to the keys its view declares.

    .venv/bin/python scripts/code_deps.py          # rewrite dvc.yaml in place
    .venv/bin/python scripts/code_deps.py --check  # exit 1 if any stage's list is out of date

A stage imports ``byol_core.cli`` and its stage module (byol_core/stages/<name>.py); the
files in ``sys.modules`` afterwards are its code. Its params keys are its ``VIEW``'s
(:class:`byol_core.schema.base.View`), which also makes the schema of each section it names
part of that code. tests/test_stages.py checks both.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Every stage in one process: the libraries all stages need (torch, onnx, ...) are imported
# once, byol_core is dropped from sys.modules, and each stage is loaded afresh in a forked
# child, which prints the byol_core modules it then holds.
PROBE = """
import os, sys
import byol_core.cli, byol_core.stages as s
for name in s.STAGES:
    s.load(name)
for module in [m for m in sys.modules if m == "byol_core" or m.startswith("byol_core.")]:
    del sys.modules[module]
for name in sys.argv[1:]:
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        import byol_core.cli, byol_core.stages as s
        s.load(name)
        print(name, *(m for m in sys.modules if m == "byol_core" or m.startswith("byol_core.")), flush=True)
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0, name
"""


def imported_files(names: list[str]) -> dict[str, list[str]]:
    """Stage -> the byol_core files it imports (``byol_core/x.py``, or a package's
    ``__init__.py``), for each stage in ``names``."""
    out = subprocess.run([sys.executable, "-c", PROBE, *names], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    found = {}
    for line in out.splitlines():
        name, *modules = line.split()
        paths = (m.replace(".", "/") for m in modules)
        found[name] = sorted(f"{p}/__init__.py" if (ROOT / p).is_dir() else f"{p}.py" for p in paths)
    if list(found) != list(names):
        raise SystemExit(f"the import probe answered for {list(found)}, not {list(names)}")
    return found


def _stage_list(text: str, stage: str, name: str) -> re.Match:
    """The lines of ``stage:``'s list ``name`` (``deps``, ``params``) in dvc.yaml's ``text``: group 1."""
    block = re.search(rf"^  {stage}:\n(?:    .*\n|\n)*?    {name}:\n((?:      - .*\n)+)", text, re.M)
    if block is None:
        raise SystemExit(f"dvc.yaml: no {name} list for stage {stage!r}")
    return block


def rewrite_params(text: str, stage: str, keys: tuple[str, ...]) -> str:
    """Replace ``stage:``'s params list with ``keys``."""
    block = _stage_list(text, stage, "params")
    return text[:block.start(1)] + "".join(f"      - {key}\n" for key in keys) + text[block.end(1):]


def rewrite(text: str, stage: str, files: list[str]) -> str:
    """Replace the run of ``- byol_core/...`` lines under ``stage:``'s deps."""
    block = _stage_list(text, stage, "deps")
    lines = block.group(1).splitlines(keepends=True)
    kept = [line for line in lines if not line.strip().startswith("- byol_core/")]
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("- byol_core/"))
    new = kept[:first] + [f"      - {f}\n" for f in files] + kept[first:]
    return text[:block.start(1)] + "".join(new) + text[block.end(1):]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from byol_core import stages

    path = ROOT / "dvc.yaml"
    text = path.read_text()
    new = text
    for stage, files in imported_files(list(stages.STAGES)).items():
        new = rewrite_params(rewrite(new, stage, files), stage, stages.load(stage).VIEW.keys())
    if "--check" in sys.argv[1:]:
        if new != text:
            print("dvc.yaml's code deps or params are out of date: run .venv/bin/python scripts/code_deps.py",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
