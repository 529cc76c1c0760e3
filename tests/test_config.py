import copy
import re
import subprocess
import sys

import pytest
import yaml

from byol_core.config import load_params, parse_params
from byol_core.errors import ByolError
from byol_core.schema.pretrain import derive_schedule
from conftest import ROOT, params_dict, write_params


def _error(raw: dict) -> str:
    with pytest.raises(ByolError) as info:
        parse_params(raw)
    return str(info.value)


def test_project_params_load_and_are_frozen():
    params = load_params(ROOT / "params.yaml")
    assert params.pretrain.epochs >= 1
    assert params.paths.prepared.is_absolute()
    with pytest.raises(Exception):
        params.pretrain.epochs = 5  # type: ignore[misc]


def test_unknown_key_is_named_with_a_suggestion():
    raw = params_dict()
    raw["pretrain"]["epoch"] = raw["pretrain"].pop("epochs")
    message = _error(raw)
    assert "pretrain.epoch: unknown key" in message
    assert "did you mean 'pretrain.epochs'" in message
    assert "pretrain.epochs: missing" in message


def test_unknown_section_is_named():
    raw = params_dict()
    raw["pretrian"] = {}
    assert "pretrian: unknown key (did you mean 'pretrain'?)" in _error(raw)


@pytest.mark.parametrize("key, value, fragment", [
    ("pretrain.epochs", "ten", "pretrain.epochs"),
    ("pretrain.epochs", 0, "pretrain.epochs: Input should be greater than or equal to 1"),
    ("pretrain.epochs", -3, "pretrain.epochs"),
    ("pretrain.tau_base", 1.5, "pretrain.tau_base: Input should be less than or equal to 1"),
    ("pretrain.tau_base", -0.1, "pretrain.tau_base"),
    ("augment.flip_p", 2, "augment.flip_p"),
    ("augment.crop_scale", [0.9, 0.1], "crop_scale must be [low, high]"),
    ("model.arch", "vgg", "model.arch"),
    ("device", "tpu", "device: must be auto, cpu, cuda or cuda:N"),
    ("evaluate.weight_decays", [], "evaluate.weight_decays"),
])
def test_bad_values_name_their_key(key, value, fragment):
    assert fragment in _error(params_dict(**{key: value}))


def test_batch_larger_than_capped_data_is_rejected_up_front():
    message = _error(params_dict(**{"data.max_train": 100, "pretrain.batch_size": 128}))
    assert "pretrain.batch_size (128) is larger than data.max_train (100)" in message


def test_batch_larger_than_prepared_data_is_rejected_at_schedule_time():
    params = parse_params(params_dict(**{"pretrain.batch_size": 256}))
    with pytest.raises(ByolError, match=r"pretrain.batch_size \(256\) is larger than the 100"):
        derive_schedule(params.pretrain, 100)


def test_derived_schedule_values():
    params = parse_params(params_dict(**{"pretrain.epochs": 10, "pretrain.batch_size": 512,
                                         "pretrain.warmup_epochs": 2, "pretrain.base_lr": 0.2}))
    schedule = derive_schedule(params.pretrain, 60_000)
    assert schedule.steps_per_epoch == 117  # last partial batch dropped
    assert schedule.total_steps == 1170
    assert schedule.warmup_steps == 234
    assert schedule.peak_lr == pytest.approx(0.4)  # 0.2 * 512 / 256


def test_relative_paths_are_anchored_at_the_params_file(tmp_path):
    params = load_params(write_params(tmp_path))
    assert params.paths.prepared == tmp_path / "data" / "prepared"
    assert params.paths.encoder == tmp_path / "models" / "encoder.pt"


def test_cli_reports_bad_params_without_traceback(tmp_path):
    path = write_params(tmp_path, {"pretrain.tau_base": 2.0})
    result = subprocess.run([sys.executable, "-m", "byol_core.cli", "pretrain", "--params", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "pretrain.tau_base" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()


def test_cli_missing_params_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "byol_core.cli", "ingest", "--params", str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "nope.yaml not found" in result.stderr


@pytest.mark.parametrize("prepared, fragment", [
    (".", "is the project folder or above it"),
    ("..", "leads outside the project folder"),
    ("data", "lies inside paths.prepared"),
    ("models/x/..", "paths.models"),
])
def test_prepared_folder_cannot_swallow_other_paths(tmp_path, prepared, fragment):
    path = write_params(tmp_path, {"paths.prepared": prepared})
    with pytest.raises(ByolError, match=re.escape(fragment)):
        load_params(path)


def test_source_dir_inside_prepared_is_refused(tmp_path):
    path = write_params(tmp_path, {"data.source_dir": "data/prepared/src"})
    with pytest.raises(ByolError, match="data.source_dir .* lies inside paths.prepared"):
        load_params(path)


@pytest.mark.parametrize("key, value, fragment", [
    ("seed", 2**40, "seed: Input should be less than or equal to"),
    ("export.max_batch", 1, "export.max_batch"),
    ("export.parity_images", 9000, "parity_images (9000) exceeds max_batch (4096)"),
    ("pretrain.warmup_epochs", 50, "pretrain: warmup_epochs (50.0) must be smaller than epochs"),
])
def test_values_that_would_crash_later_are_refused_now(key, value, fragment):
    assert fragment in _error(params_dict(**{key: value}))


@pytest.mark.parametrize("key", ["paths.prepared", "paths.models", "paths.metrics", "paths.resume", "data.source_dir"])
def test_relative_paths_cannot_leave_the_project_through_dotdot(tmp_path, key):
    project = tmp_path / "project"
    project.mkdir()
    path = write_params(project, {key: "data/../../outside"})
    with pytest.raises(ByolError, match=re.escape(f"{key}: 'data/../../outside' leads outside the project folder "
                                                  f"{project} (through '..', to {tmp_path / 'outside'})")):
        load_params(path)


def test_relative_paths_cannot_leave_the_project_through_a_symlink(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (project / "data").symlink_to(tmp_path / "elsewhere")
    path = write_params(project, {"paths.models": "data/models"})
    with pytest.raises(ByolError, match="paths.models: 'data/models' leads outside the project folder .*through a symlink"):
        load_params(path)


def test_the_source_folder_alone_may_be_a_symlink_to_another_disk(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (tmp_path / "big-disk" / "images").mkdir(parents=True)
    (project / "data" / "images").symlink_to(tmp_path / "big-disk" / "images")  # only read: followed
    params = load_params(write_params(project, {"data.source_dir": "data/images"}))
    assert params.data.source_dir == project / "data" / "images"
    path = write_params(project, {"data.source_dir": "data/images", "paths.prepared": "data/images/prepared"})
    with pytest.raises(ByolError, match="paths.prepared: 'data/images/prepared' leads outside .*through a symlink"):
        load_params(path)  # written through the same link: refused


def test_absolute_paths_and_inner_symlinks_are_taken_as_written(tmp_path):
    project = tmp_path / "project"
    (project / "real").mkdir(parents=True)
    (project / "alias").symlink_to(project / "real")  # a symlink that stays inside is fine
    outside = tmp_path / "big-disk" / "models"
    params = load_params(write_params(project, {"paths.models": str(outside), "paths.metrics": "alias/metrics"}))
    assert params.paths.models == outside
    assert params.paths.metrics == project / "alias" / "metrics"


def test_every_recipe_names_real_keys_and_validates(tmp_path):
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        overrides = yaml.safe_load(recipe.read_text())
        raw = params_dict(**overrides)  # a key params.yaml lacks raises KeyError here
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        params = load_params(tmp_path / "params.yaml")
        for dotted, value in overrides.items():
            node = params
            for part in dotted.split("."):
                node = getattr(node, part)
            assert node == (tuple(value) if isinstance(value, list) else value), (recipe.name, dotted)


def test_bare_on_off_from_yaml_mean_the_words(tmp_path):
    path = write_params(tmp_path)
    path.write_text(path.read_text().replace("blur: auto", "blur: off"))  # as `dvc exp run -S` writes it
    assert load_params(path).augment.blur == "off"
    path.write_text(path.read_text().replace("blur: off", "blur: on"))
    assert load_params(path).augment.blur == "on"


def _leaves(node: object, key: str = ""):
    """(dotted key, value) of every number and flag in a params mapping; a list's items as key.N."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _leaves(value, f"{key}.{name}" if key else name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{key}.{i}")
    elif isinstance(node, (bool, int, float)):
        yield key, node


def _with(raw: dict, dotted: str, value: object) -> dict:
    raw = copy.deepcopy(raw)
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(leaf) if isinstance(node, list) else leaf] = value
    return raw


def test_a_boolean_is_no_number_anywhere_and_flags_still_take_booleans():
    """YAML reads a bare true/false as a bool, and lax validation would take it as 1 or 0
    (`epochs: true` trained one epoch): every number in params.yaml refuses one, naming its key."""
    raw = params_dict(**{"data.channels": 3, "data.image_size": 32, "data.max_train": 512, "data.max_test": 256,
                         "data.max_unlabeled": 64})  # numbers where the defaults are null
    leaves = list(_leaves(raw))
    numbers = [key for key, value in leaves if not isinstance(value, bool)]
    flags = [key for key, value in leaves if isinstance(value, bool)]
    assert "pretrain.epochs" in numbers and "augment.crop_ratio.1" in numbers and len(numbers) > 50
    assert sorted(flags) == ["model.small_stem", "pretrain.compile", "pretrain.cuda_graph"]
    parse_params(raw)
    for key in numbers:
        for value in (True, False):
            message = _error(_with(raw, key, value))
            assert re.search(rf"invalid params:\n  {re.escape(key)}(\.\S+)?: Input should be .* \(got {value}\)",
                             message), (key, message)
    for key in flags:
        for value in (True, False):
            node = parse_params(_with(raw, key, value))
            for part in key.split("."):
                node = getattr(node, part)
            assert node is value, key
    for key in flags:
        assert f"{key}: Input should be a valid boolean (got 1)" in _error(_with(raw, key, 1))


def test_whole_numbers_still_fill_float_params():
    params = parse_params(params_dict(**{"pretrain.base_lr": 1, "pretrain.weight_decay": 0, "data.shard_mb": 256,
                                         "augment.crop_ratio": [1, 2], "evaluate.weight_decays": [0, 1]}))
    assert params.pretrain.base_lr == 1.0 and isinstance(params.pretrain.base_lr, float)
    assert params.pretrain.weight_decay == 0.0 and params.data.shard_mb == 256.0
    assert params.augment.crop_ratio == (1.0, 2.0) and params.evaluate.weight_decays == (0.0, 1.0)
    assert "pretrain.epochs: Input should be a valid integer (got 3.5)" in _error(params_dict(**{"pretrain.epochs": 3.5}))
