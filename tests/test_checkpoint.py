import pickle

import pytest
import torch

from byol_core.train.checkpoint import load_encoder, save_encoder
from byol_core.config import load_params
from byol_core.errors import ByolError
from byol_core.train.nets import EncoderSpec
from byol_core.train.resume import load_state, restore, save_state, state_record
from byol_core.train.step import Recipe, new_state, train_step
from byol_core.train.augment import Augmenter

CPU = torch.device("cpu")


def _trained_state(params_file):
    params = load_params(params_file)
    recipe = Recipe.for_run(params.pretrain, 256)
    state = new_state(params, 1, recipe, CPU)
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    augment = Augmenter.for_data(params.augment, 28, torch.zeros(1), torch.ones(1), torch.Generator().manual_seed(0))
    train_step(state, images, augment)
    train_step(state, images, augment)  # past warmup's LR 0 at step 0: the weights move
    return params, state


def test_state_round_trip_is_exact(tiny_params_file, tmp_path):
    params, state = _trained_state(tiny_params_file)
    path = tmp_path / "state.pt"
    save_state(path, state_record(state, "key", params))
    blob = load_state(path)
    restored = new_state(params, 1, state.recipe, CPU)
    restore(restored, blob, path)
    assert restored.step == state.step == 2
    for (name, a), (_, b) in zip(state.model.state_dict().items(), restored.model.state_dict().items()):
        assert torch.equal(a, b), name
    for a, b in zip(state.optimizer.state.values(), restored.optimizer.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert blob["params"]["pretrain"]["epochs"] == params.pretrain.epochs  # resolved config travels along


def test_encoder_round_trip_is_exact(tmp_path):
    spec = EncoderSpec("resnet18", 0.125, 3, False)
    from byol_core.train.nets import build_encoder
    encoder = build_encoder(spec)
    save_encoder(tmp_path / "enc.pt", encoder, spec, {"size": 32, "mean": [0.5] * 3, "std": [0.2] * 3})
    loaded, loaded_spec, info = load_encoder(tmp_path / "enc.pt")
    assert loaded_spec == spec and info["size"] == 32
    for (name, a), (_, b) in zip(encoder.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_equal_contents_give_equal_bytes_whatever_the_file_is_called(tmp_path):
    """torch.save to a path names the archive's records after the file, and atomic_write
    saves to a random temp name: equal weights must still give an equal file, or DVC
    reruns every stage after pretrain for nothing."""
    import hashlib
    import zipfile

    from byol_core.io.storage import save_torch, torch_writer

    state = {"format": 1, "weights": torch.arange(12.0).reshape(3, 4), "history": [{"loss": 0.5}]}
    for tmp in (tmp_path / ".encoder.pt.abc.tmp", tmp_path / ".encoder.pt.xyz123.tmp"):
        torch_writer(state)(tmp)
    save_torch(tmp_path / "models" / "encoder.pt", state)  # through the atomic write, twice
    first = (tmp_path / "models" / "encoder.pt").read_bytes()
    save_torch(tmp_path / "models" / "encoder.pt", state)
    files = [tmp_path / ".encoder.pt.abc.tmp", tmp_path / ".encoder.pt.xyz123.tmp", tmp_path / "models" / "encoder.pt"]
    assert len({hashlib.md5(path.read_bytes()).hexdigest() for path in files}) == 1
    assert first == files[-1].read_bytes()
    assert {name.split("/")[0] for name in zipfile.ZipFile(files[0]).namelist()} == {"archive"}
    assert torch.equal(torch.load(files[-1], weights_only=True)["weights"], state["weights"])


class _Payload:
    def __reduce__(self):
        return (print, ("this would run code",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickled_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "x": _Payload()}, path)
    with pytest.raises(ByolError, match="not a readable training checkpoint"):
        load_state(path)
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ByolError, match="not a readable encoder file"):
        load_encoder(path)


def test_truncated_checkpoint_is_refused_with_a_fix(tiny_params_file, tmp_path):
    params, state = _trained_state(tiny_params_file)
    path = tmp_path / "state.pt"
    save_state(path, state_record(state, "key", params))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ByolError, match="Delete it to start pretraining afresh"):
        load_state(path)


def test_encoder_of_another_architecture_is_refused(tmp_path):
    from byol_core.train.nets import build_encoder
    spec = EncoderSpec("resnet18", 0.125, 1, True)
    save_encoder(tmp_path / "enc.pt", build_encoder(spec), spec, {"size": 28, "mean": [0.5], "std": [0.2]})
    blob = torch.load(tmp_path / "enc.pt", weights_only=True)
    blob["spec"]["width"] = 0.25
    torch.save(blob, tmp_path / "enc.pt")
    with pytest.raises(ByolError, match="weights do not fit the saved architecture"):
        load_encoder(tmp_path / "enc.pt")
