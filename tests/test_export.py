import onnx
import pytest
import torch

from byol_core.export import check_parity, export_onnx
from byol_core.onnxmodel import open_session
from byol_core.train.nets import EncoderSpec, build_encoder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    spec = EncoderSpec("resnet18", 0.125, 3, True)
    encoder = build_encoder(spec).eval()
    # Give BatchNorm non-trivial running statistics so that folding it is really exercised.
    encoder.train()
    with torch.no_grad():
        encoder(torch.randn(64, 3, 32, 32) * 2 + 0.5)
    encoder.eval()
    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    export_onnx(encoder, torch.randn(2, 3, 32, 32), path, opset=20, max_batch=512, metadata={"byol.test": "yes"})
    return encoder, spec, path


def test_export_is_one_file_with_named_dynamic_batch(exported):
    _, _, path = exported
    assert not list(path.parent.glob("*.data"))  # no external-data side file
    model = onnx.load(str(path))
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic batch axis
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert model.graph.output[0].name == "features"
    assert {p.key: p.value for p in model.metadata_props}["byol.test"] == "yes"


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnxruntime_matches_pytorch_at_any_batch(exported, batch):
    encoder, spec, path = exported
    session, provider = open_session(path)
    assert provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    images = torch.randn(batch, 3, 32, 32)
    result = check_parity(session, encoder, images, atol=1e-4, rtol=1e-3)
    assert result["parity_ok"], result
    assert result["max_abs_diff"] < 1e-4
    out = session.run(["features"], {"images": images.numpy()})[0]
    assert out.shape == (batch, spec.feature_dim)


def test_parity_check_can_fail(exported):
    encoder, _, path = exported
    session, _ = open_session(path)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        for p in encoder.layer4.parameters():  # the PyTorch side drifts away from the exported graph
            p.add_(0.01)
    try:
        result = check_parity(session, encoder, images, atol=1e-4, rtol=1e-3)
    finally:
        with torch.no_grad():
            for p in encoder.layer4.parameters():
                p.sub_(0.01)
    assert not result["parity_ok"]
    assert result["max_abs_diff"] > 1e-3


def test_knn_votes_survive_a_tiny_temperature():
    from byol_core.train.features import knn_predict
    from byol_core.schema.probe import KnnConfig

    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    bank_labels = torch.arange(4).repeat_interleave(50)
    bank = centres[bank_labels] + torch.randn(200, 16)
    queries = centres + 0.1 * torch.randn(4, 16)
    for temperature in (0.5, 0.01, 0.001):
        predicted = knn_predict(bank, bank_labels, queries, 4, KnnConfig(k=20, temperature=temperature))
        assert predicted.tolist() == [0, 1, 2, 3], temperature


def test_grid_pooled_encoder_exports_with_its_wider_feature(tmp_path):
    """model.pool > 1: the feature is the channels of every cell, and the ONNX file agrees."""
    torch.manual_seed(0)
    spec = EncoderSpec("resnet18", 0.125, 1, True, pool=2)
    encoder = build_encoder(spec).eval()
    path = tmp_path / "encoder.onnx"
    export_onnx(encoder, torch.randn(2, 1, 28, 28), path, opset=20, max_batch=64, metadata={})
    session, _ = open_session(path)
    images = torch.randn(5, 1, 28, 28)
    result = check_parity(session, encoder, images, atol=1e-4, rtol=1e-3)
    assert result["parity_ok"], result
    out = session.run(["features"], {"images": images.numpy()})[0]
    assert out.shape == (5, spec.feature_dim) == (5, 64 * 4)
    # The cells keep where a part is: shifting the image moves the feature between cells.
    shifted = torch.roll(images, shifts=14, dims=3)
    with torch.no_grad():
        a, b = encoder(images).view(5, 64, 2, 2), encoder(shifted).view(5, 64, 2, 2)
    assert not torch.allclose(a, b, atol=1e-3)
