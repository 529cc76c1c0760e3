"""The front door: the README, the documentation site and the command's own help.

- docs/params.md is what scripts/params_reference.py writes from the schema, params.yaml and
  dvc.yaml (regenerate it after changing any of them), and names every key;
- `mkdocs build --strict` passes, so a broken link, a missing anchor or a page left out of the
  navigation fails here;
- the README stays short and its links lead to files that exist;
- `byol --version` works, and `byol STAGE --help` names every file dvc.yaml says the stage reads
  and writes, and a docs page (and heading) that exists.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify
from pydantic import BaseModel

from byol_core import cli, schema
from byol_core.config import Params

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("params_reference", ROOT / "scripts" / "params_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaf_keys() -> list[str]:
    keys = []
    for key in schema.SECTIONS:
        model = Params.model_fields[key].annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            keys += [f"{key}.{name}" for name in model.model_fields]
        else:
            keys.append(key)
    return keys


def test_params_reference_is_current():
    page = _generator().render()
    assert (DOCS / "params.md").read_text() == page, (
        "docs/params.md is stale: run `python scripts/params_reference.py` and commit it")


def test_params_reference_names_every_key_with_its_stages():
    page = (DOCS / "params.md").read_text()
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `([\w.]+)` \|.*$", page, re.M)}
    assert sorted(rows) == sorted(_leaf_keys())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, body in stages.items():
        for listed in body.get("params", []):
            for key, row in rows.items():
                if key == listed or key.startswith(listed + "."):
                    reruns = row.split(" | ")[4]
                    assert stage in reruns.split(", "), f"{key}: dvc.yaml lists it for {stage}, the page says {reruns}"


def test_params_reference_shows_the_schema_bounds():
    gen = _generator()
    # pretrain.momentum is Field(ge=0.0, lt=1.0); augment.crop_scale a pair of (0, 1] floats
    assert gen.describe(Params.model_fields["pretrain"].annotation.model_fields["momentum"].annotation,
                        Params.model_fields["pretrain"].annotation.model_fields["momentum"].metadata) == ("float", "[0.0, 1.0)")
    crop = Params.model_fields["augment"].annotation.model_fields["crop_scale"]
    assert gen.describe(crop.annotation, crop.metadata) == ("[float, float]", "each (0.0, 1.0]")


def test_site_builds_strict(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, f"mkdocs build --strict failed (pip install -e '.[dev]' installs mkdocs):\n{run.stderr[-4000:]}"
    for page in ("index", "getting-started", "params", "bad-input", "results"):
        assert (tmp_path / "site" / f"{page}.html").is_file()


def test_every_docs_page_is_in_the_navigation():
    def pages(entry) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        items = entry.values() if isinstance(entry, dict) else entry
        return [page for item in items for page in pages(item)]

    nav = pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert links, "the README links to the documentation"
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, f"README links to files that are not there: {missing}"
    assert "make run" in readme.split("## Results")[0] and "make test" in readme.split("## Results")[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"byol {version}"


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def _stage_files() -> dict[str, list[str]]:
    """Stage -> the data files dvc.yaml says it reads and writes, at params.yaml's paths."""
    paths = yaml.safe_load((ROOT / "params.yaml").read_text())["paths"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def resolved(entry) -> str:
        name = next(iter(entry)) if isinstance(entry, dict) else entry
        return re.sub(r"\$\{paths\.(\w+)\}", lambda m: paths[m[1]], name)

    files = {}
    for stage, body in stages.items():
        named = [resolved(e) for key in ("deps", "outs", "metrics", "plots") for e in body.get(key, [])]
        files[stage] = [f for f in named if not f.startswith("byol_core/")]
    return files


@pytest.mark.parametrize("stage", ["scan", "ingest", "pretrain", "evaluate", "export", "embed"])
def test_stage_help_names_what_it_reads_and_writes(stage, capsys):
    text = " ".join(_help([stage], capsys).split())
    for name in _stage_files()[stage]:
        assert name in text, f"`byol {stage} --help` does not name {name}, which dvc.yaml lists for it"
    assert "reads:" in text and "writes:" in text


@pytest.mark.parametrize("command", sorted(cli.FILES))
def test_help_points_to_a_docs_page_that_exists(command, capsys):
    text = _help([command], capsys)
    match = re.search(r"docs:\s+docs/([\w-]+\.md)(?:#([\w-]+))?", text)
    assert match, f"`byol {command} --help` names no docs page"
    page = DOCS / match[1]
    assert page.is_file(), f"`byol {command} --help` points to {page}, which is not there"
    if match[2]:
        headings = {slugify(h, "-") for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}
        assert match[2] in headings, f"`byol {command} --help` points to #{match[2]}, not a heading of {match[1]}"


def test_top_level_help_lists_every_stage(capsys):
    text = _help([], capsys)
    for stage in ("scan", "ingest", "pretrain", "evaluate", "export", "embed"):
        assert re.search(rf"^  {stage}\s+\S.*\n\s+-> ", text, re.M), f"`byol --help` does not say what {stage} writes"
    assert "docs/index.md" in text and (DOCS / "index.md").is_file()
