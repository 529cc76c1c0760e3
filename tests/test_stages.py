"""Each stage reads exactly the params keys and imports exactly the byol_core files that
dvc.yaml lists for it: more would let DVC skip a stage whose inputs changed, fewer would
rerun it for nothing."""

import json
import shutil
from typing import Annotated

import pytest
import yaml

from byol_core import stages
from byol_core.config import Params, load_params
from byol_core.schema.base import Only, View
from byol_core.schema.paths import PathsConfig
from byol_core.schema.probe import KnnConfig
from byol_core.schema.pretrain import PretrainConfig
from byol_core.schema.run import Seed
from conftest import CODE_DEPS, ROOT, TINY, make_fashion_files, write_params

DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_has_the_six_stages_in_order_each_running_its_command():
    assert list(DVC_STAGES) == list(stages.STAGES) == ["scan", "ingest", "pretrain", "evaluate", "export", "embed"]
    for name, stage in DVC_STAGES.items():
        assert stage["cmd"] == f"byol {name}"


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_dvc_yaml_params_are_the_keys_the_stage_declares(name):
    assert DVC_STAGES[name]["params"] == list(stages.load(name).VIEW.keys())


def test_the_params_lists_are_written_from_the_views():
    """scripts/code_deps.py writes each list from its view: a list that differs is put back."""
    text = (ROOT / "dvc.yaml").read_text()
    wrong = CODE_DEPS.rewrite_params(text, "evaluate", ("seed", "paths.prepared", "knn", "evaluate"))
    assert yaml.safe_load(wrong)["stages"]["evaluate"]["params"] == ["seed", "paths.prepared", "knn", "evaluate"]
    assert yaml.safe_load(wrong)["stages"]["export"] == DVC_STAGES["export"]  # the other stages are left alone
    assert CODE_DEPS.rewrite_params(wrong, "evaluate", stages.load("evaluate").VIEW.keys()) == text


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_a_view_types_each_key_as_the_whole_file_does(name):
    view = stages.load(name).VIEW
    for key, field in view.model_fields.items():
        assert field.annotation is Params.model_fields[key].annotation, key


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_a_view_records_its_keys_in_the_file_s_order(name):
    """A checkpoint records its view's model_dump: the keys keep params.yaml's order."""
    params = load_params(ROOT / "params.yaml")
    view = stages.load(name).VIEW
    whole = params.model_dump(mode="json")
    read: dict[str, set[str] | None] = {}
    for key in view.keys():
        head, _, leaf = key.partition(".")
        read[head] = read.get(head, set()) | {leaf} if leaf else None
    expected = {head: whole[head] if read[head] is None else {k: v for k, v in whole[head].items() if k in read[head]}
                for head in whole if head in read}
    assert json.dumps(view.of(params).model_dump(mode="json")) == json.dumps(expected)


@pytest.fixture(scope="module")
def imported():
    return CODE_DEPS.imported_files(list(stages.STAGES))


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_dvc_yaml_code_deps_are_the_modules_the_stage_imports(name, imported):
    declared = {dep for dep in DVC_STAGES[name]["deps"] if dep.startswith("byol_core/")}
    assert declared == set(imported[name])
    assert all((ROOT / dep).is_file() for dep in declared)


class _Small(View):
    seed: Seed
    paths: Annotated[PathsConfig, Only("models")]
    knn: KnnConfig


def test_a_view_keeps_only_its_keys():
    params = load_params(ROOT / "params.yaml")
    small = _Small.of(params)
    assert _Small.keys() == ("seed", "paths.models", "knn")
    assert small.seed == params.seed and small.knn == params.knn
    assert small.paths.encoder == params.paths.encoder  # derived from paths.models
    with pytest.raises(AttributeError, match="prepared"):
        small.paths.prepared
    with pytest.raises(AttributeError, match="pretrain"):
        small.pretrain


def test_a_view_of_a_key_params_yaml_lacks_or_out_of_order_is_refused():
    with pytest.raises(KeyError, match="knn.kk"):
        type("Wrong", (View,), {"__annotations__": {"knn": Annotated[KnnConfig, Only("kk")]}})
    with pytest.raises(KeyError, match="sed"):
        type("Wrong", (View,), {"__annotations__": {"sed": Seed}})
    with pytest.raises(TypeError, match="params.yaml's order"):
        type("Wrong", (View,), {"__annotations__": {"pretrain": PretrainConfig, "seed": Seed}})


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


CASES = [(name, key) for name in stages.STAGES for key in stages.load(name).VIEW.keys()]


def _without(view: View, key: str) -> View:
    """``view`` less one of its keys."""
    head, _, leaf = key.partition(".")
    values = dict(view.__dict__)
    if leaf:
        section = values[head]
        values[head] = type(section).model_construct(**{k: v for k, v in section.__dict__.items() if k != leaf})
    else:
        del values[head]
    return type(view).model_construct(**values)


@pytest.mark.parametrize(("name", "key"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_declared_key_is_read(project, name, key):
    """Hand the stage all its keys but one: it must fail for want of exactly that one."""
    shutil.rmtree(project.paths.resume, ignore_errors=True)  # a left-over state would skip training
    stage = stages.load(name)
    # The message names the key.
    with pytest.raises(AttributeError, match=rf"no attribute '{key.split('.')[-1]}'"):
        stage.run(_without(stage.VIEW.of(project), key))
