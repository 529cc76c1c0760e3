"""Each stage reads exactly the params keys and imports exactly the byol_core files that
dvc.yaml lists for it: more would let DVC skip a stage whose inputs changed, fewer would
rerun it for nothing."""

import shutil

import pytest
import yaml

from byol_core import stages
from byol_core.config import load_params
from byol_core.schema.base import restrict
from conftest import CODE_DEPS, ROOT, TINY, make_fashion_files, write_params

DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_has_the_six_stages_in_order_each_running_its_command():
    assert list(DVC_STAGES) == list(stages.STAGES) == ["scan", "ingest", "pretrain", "evaluate", "export", "embed"]
    for name, stage in DVC_STAGES.items():
        assert stage["cmd"] == f"byol {name}"


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_dvc_yaml_params_are_the_keys_the_stage_declares(name):
    assert sorted(DVC_STAGES[name]["params"]) == sorted(stages.load(name).PARAMS)


@pytest.fixture(scope="module")
def imported():
    return CODE_DEPS.imported_files(list(stages.STAGES))


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_dvc_yaml_code_deps_are_the_modules_the_stage_imports(name, imported):
    declared = {dep for dep in DVC_STAGES[name]["deps"] if dep.startswith("byol_core/")}
    assert declared == set(imported[name])
    assert all((ROOT / dep).is_file() for dep in declared)


def test_restrict_keeps_only_the_named_keys():
    params = load_params(ROOT / "params.yaml")
    small = restrict(params, ["seed", "paths.models", "knn"])
    assert small.seed == params.seed and small.knn == params.knn
    assert small.paths.encoder == params.paths.encoder  # derived from paths.models
    with pytest.raises(AttributeError, match="prepared"):
        small.paths.prepared
    with pytest.raises(AttributeError, match="pretrain"):
        small.pretrain
    with pytest.raises(KeyError, match="knn.kk"):
        restrict(params, ["knn.kk"])
    with pytest.raises(KeyError, match="sed"):
        restrict(params, ["sed"])


# Tiny enough that each stage runs in seconds; each key is then dropped in turn.
SMALL = {**TINY, "data.max_train": 128, "data.max_test": 64, "pretrain.epochs": 1,
         "pretrain.batch_size": 32, "pretrain.monitor_bank": 64, "pretrain.monitor_queries": 32,
         "evaluate.max_iter": 10, "export.parity_images": 8}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    make_fashion_files(root / "src", n_train=160, n_test=80)
    params = load_params(write_params(root, {**SMALL, "data.source_dir": str(root / "src")}))
    for name in stages.STAGES:  # every stage runs on exactly its declared keys (scan's listing is ingest's input)
        stages.run(name, params)
    return params


CASES = [(name, key) for name in stages.STAGES for key in stages.load(name).PARAMS]


@pytest.mark.parametrize(("name", "key"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_declared_key_is_read(project, name, key):
    """Hand the stage all its keys but one: it must fail for want of exactly that one."""
    shutil.rmtree(project.paths.resume, ignore_errors=True)  # a left-over state would skip training
    stage = stages.load(name)
    others = [k for k in stage.PARAMS if k != key]
    # The message names the key, or its section when that was the section's only key.
    with pytest.raises(AttributeError, match=rf"no attribute '({'|'.join(key.split('.'))})'"):
        stage.run(restrict(project, others))
