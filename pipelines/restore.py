"""Which earlier run of a stage the present inputs repeat, found in Dagster's own records.

With a shared remote, DVC finds an earlier run of the same inputs in its run-cache, but it
moves the whole run-cache to do so: `dvc repro --pull` first copies *every* entry of the
remote's run-cache to the machine, and `dvc push --run-cache` copies every local entry back
(dvc/stage/cache.py transfers them all, each time). A restored step then costs time in
proportion to the remote's history: 5.1 s with 2 entries, 17.9 s with 800 (about 160 runs of
the five stages), over SSH on loopback, against 2.8 and 3.3 s this way
(benchmarks/restore_history.py, docs/machines.md).

Dagster already holds that history. Each materialization made with a remote records its
stage's dvc.lock entry (the cmd, the params and the md5 of every dep and output), and only
after its outputs were pushed. :func:`matching` picks, among an asset's earlier entries, one
whose cmd, params, deps and outputs are those the stage has now in this checkout. The step
writes it into dvc.lock and runs `dvc repro --pull --no-run-cache`: DVC checks the entry as
it checks any lock entry (anything changed, and it runs the stage) and pulls that entry's
outputs only. What this module reads of dvc.yaml is what DVC compares; it only chooses, DVC
decides.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

_VARIABLE = re.compile(r"\$\{\s*([A-Za-z0-9_.-]+)\s*\}")
_MISSING = object()


class DvcYamlLoader(yaml.SafeLoader):
    """YAML as DVC reads it (YAML 1.2, ruamel): ``1e-05`` is a float. PyYAML's YAML 1.1 wants
    a dot in a float and reads it as a string, so dvc.lock (DVC writes ``1e-05``) would not
    equal params.yaml (``1.0e-5``), and an entry written back would hold a string."""


DvcYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str):
    return yaml.load(text, Loader=DvcYamlLoader)  # noqa: S506 (a SafeLoader)


@dataclass(frozen=True)
class Spec:
    """A stage as dvc.yaml defines it in this checkout, its ``${...}`` resolved from params.yaml."""

    cmd: str
    deps: frozenset[str]
    params: dict  # params.yaml key -> its value now
    outs: frozenset[str]  # outs, metrics and plots: all that dvc.lock lists as outs
    always_changed: bool


@dataclass(frozen=True)
class Earlier:
    """A dvc.lock entry of the stage as an earlier materialization recorded it."""

    run_id: str
    entry: dict


def _lookup(tree, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _resolve(text: str, params: dict) -> str | None:
    """``text`` with each ``${key}`` replaced by params.yaml's value; None when one has none."""
    missing = []

    def value(match: re.Match) -> str:
        found = _lookup(params, match[1])
        if found is _MISSING or isinstance(found, (dict, list)):
            missing.append(match[1])
            return ""
        return str(found)

    resolved = _VARIABLE.sub(value, text)
    return None if missing else resolved


def _paths(items, params: dict) -> set[str] | None:
    paths = set()
    for item in items or []:
        name = next(iter(item)) if isinstance(item, dict) else item
        resolved = _resolve(str(name), params) if isinstance(name, str) else None
        if resolved is None:
            return None
        paths.add(resolved)
    return paths


def spec(root: Path, stage: str) -> Spec | None:
    """The stage in ``root``'s dvc.yaml; None when it is not there or is written in a way read
    here only partly (vars, foreach, params from other files): DVC's own run-cache is used then."""
    try:
        pipeline = load_yaml((root / "dvc.yaml").read_text()) or {}
        params = load_yaml((root / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(pipeline, dict) or not isinstance(params, dict) or "vars" in pipeline:
        return None
    stages = pipeline.get("stages")
    definition = stages.get(stage) if isinstance(stages, dict) else None
    if not isinstance(definition, dict) or not isinstance(definition.get("cmd"), str) \
            or any(key in definition for key in ("wdir", "vars", "foreach", "matrix", "do")):
        return None
    cmd = _resolve(definition["cmd"], params)
    deps = _paths(definition.get("deps"), params)
    outs = _paths([*(definition.get("outs") or []), *(definition.get("metrics") or []),
                   *(definition.get("plots") or [])], params)
    keys = definition.get("params") or []
    if cmd is None or deps is None or outs is None or not all(isinstance(key, str) for key in keys):
        return None
    values = {key: _lookup(params, key) for key in keys}
    if any(value is _MISSING for value in values.values()):
        return None
    return Spec(cmd, frozenset(deps), values, frozenset(outs), bool(definition.get("always_changed")))


def _md5(path: Path) -> str | None:
    if not path.is_file() or path.is_symlink():
        return None
    digest = hashlib.md5()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def produced(lock: dict, stage: str) -> dict[str, str]:
    """Output path -> md5 of every other stage in ``lock`` (this checkout's dvc.lock, with the
    upstream stages' entries adopted): what a data dep of ``stage`` must hash to."""
    return {out["path"]: out.get("md5") for name, entry in (lock.get("stages") or {}).items() if name != stage
            for out in (entry or {}).get("outs", []) if isinstance(out, dict) and "path" in out}


def repeats(found: Spec, entry: dict, root: Path, data: dict[str, str], hashed: dict | None = None) -> bool:
    """Whether ``entry`` is a run of the stage as it stands: the same cmd, params, deps (data
    deps by the md5 their stage recorded, code by this checkout's bytes) and outputs.
    ``hashed``: md5s of this checkout's files already read (path -> md5), filled as it goes."""
    hashed = {} if hashed is None else hashed
    if not isinstance(entry, dict) or entry.get("cmd") != found.cmd:
        return False
    if (entry.get("params") or {}).get("params.yaml", {}) != found.params:
        return False
    deps, outs = entry.get("deps") or [], entry.get("outs") or []
    if {dep.get("path") for dep in deps} != found.deps or {out.get("path") for out in outs} != found.outs:
        return False
    if not all(item.get("hash") == "md5" and item.get("md5") for item in deps + outs):
        return False  # an older hash (md5-dos2unix): leave it to DVC
    for dep in deps:
        path, md5 = dep["path"], dep["md5"]
        if path in data:
            if data[path] != md5:
                return False
        elif md5.endswith(".dir"):
            return False
        else:
            if path not in hashed:
                hashed[path] = _md5(root / path)
            if hashed[path] != md5:
                return False
    return True


def matching(found: Spec, root: Path, lock: dict, stage: str, earlier: list[Earlier]) -> Earlier | None:
    """The first of ``earlier`` (newest first) that repeats the stage as it stands, or None."""
    data, hashed = produced(lock, stage), {}
    return next((candidate for candidate in earlier if repeats(found, candidate.entry, root, data, hashed)), None)
