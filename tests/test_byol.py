import math

import pytest
import torch
import torch.nn.functional as F

from byol_core.train.byol import BYOL, byol_loss, collapse_std, ema_update, target_tau
from byol_core.train.nets import EncoderSpec

SPEC = EncoderSpec(arch="resnet18", width=0.125, in_channels=1, small_stem=True)


def _model(seed: int = 0) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(SPEC, projector_hidden=64, projector_out=16, predictor_hidden=64)


def _perturb_online(model: BYOL) -> None:
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(torch.randn_like(p))


def test_target_starts_as_exact_copy_and_gets_no_gradient():
    model = _model()
    for t, o in zip(model.target.parameters(), model.online.parameters()):
        assert torch.equal(t, o)
        assert not t.requires_grad
    x = torch.randn(8, 1, 16, 16)
    loss, _ = model(x, x.flip(3))
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is not None for p in model.online.parameters())


def test_target_is_not_among_trainable_parameters():
    model = _model()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.target.parameters()}
    assert len(trainable) == len(list(model.online.parameters())) + len(list(model.predictor.parameters()))


def test_ema_tau_one_keeps_target_and_tau_zero_copies_online():
    model = _model()
    _perturb_online(model)
    before = [t.clone() for t in model.target.parameters()]
    model.update_target(1.0)
    assert all(torch.equal(t, b) for t, b in zip(model.target.parameters(), before))
    model.update_target(0.0)
    assert all(torch.equal(t, o) for t, o in zip(model.target.parameters(), model.online.parameters()))


def test_ema_matches_formula():
    target = [torch.randn(5, 3), torch.randn(7)]
    online = [torch.randn(5, 3), torch.randn(7)]
    expected = [0.9 * t + 0.1 * o for t, o in zip(target, online)]
    ema_update(target, online, 0.9)
    for got, want in zip(target, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_tau_schedule_endpoints_midpoint_and_cap():
    base, total = 0.996, 1000
    assert target_tau(0, total, base) == pytest.approx(base)
    assert target_tau(total // 2, total, base) == pytest.approx(1 - (1 - base) / 2)
    assert target_tau(total, total, base) == pytest.approx(1.0)
    assert target_tau(total + 500, total, base) == pytest.approx(1.0)
    taus = [target_tau(k, total, base) for k in range(0, total + 1, 50)]
    assert all(a <= b for a, b in zip(taus, taus[1:]))


def test_loss_equals_normalised_mse_and_lies_in_range():
    torch.manual_seed(0)
    p, z = torch.randn(64, 32), torch.randn(64, 32)
    mse = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(1).mean()
    assert byol_loss(p, z).item() == pytest.approx(mse.item(), rel=1e-5)
    assert 0.0 <= byol_loss(p, z).item() <= 4.0
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-5)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant


def test_symmetrised_loss_does_not_depend_on_view_order():
    model = _model()
    model.eval()  # fixed BN statistics, so swapping views is the only change
    x1, x2 = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        a, _ = model(x1, x2)
        b, _ = model(x2, x1)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert 0.0 <= a.item() <= 8.0


def test_loss_falls_under_optimisation_on_a_fixed_batch():
    model = _model()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    x = torch.rand(16, 1, 16, 16)
    v1, v2 = x + 0.1 * torch.randn_like(x), x.flip(3)
    losses = []
    for _ in range(30):
        loss, _ = model(v1, v2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_target(0.99)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_collapse_indicator_extremes():
    torch.manual_seed(0)
    spread = torch.randn(4096, 64)
    assert collapse_std(spread).item() == pytest.approx(1.0, abs=0.05)
    collapsed = torch.ones(4096, 64) + 1e-4 * torch.randn(4096, 64)
    assert collapse_std(collapsed).item() < 0.01
    assert math.isfinite(collapse_std(collapsed).item())


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_pool_grid_sets_the_feature_and_the_projector_input(pool):
    spec = EncoderSpec(arch="resnet18", width=0.125, in_channels=1, small_stem=True, pool=pool)
    model = BYOL(spec, 32, 16, 32)
    model.eval()
    with torch.no_grad():
        feature = model.encoder(torch.randn(4, 1, 28, 28))
        projected = model.online["projector"](feature)
    assert feature.shape == (4, spec.feature_dim) == (4, 64 * pool * pool)
    assert projected.shape == (4, 16)
    assert EncoderSpec.from_dict(spec.to_dict()) == spec


def test_saved_spec_without_pool_reads_as_global_pooling_and_bad_pool_is_refused():
    old = {"arch": "resnet18", "width": 0.125, "in_channels": 1, "small_stem": True}
    assert EncoderSpec.from_dict(old).pool == 1
    for bad in (0, 9, 2.0, True, "2"):
        with pytest.raises(ValueError, match="pool"):
            EncoderSpec.from_dict({**old, "pool": bad})
