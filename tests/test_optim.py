import pytest
import torch

from byol_core.train.optim import LARS, lr_at, param_groups


def _setup(weight_decay=0.1, momentum=0.0, eta=1e-3, lr=0.5):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 4))
    bias = torch.nn.Parameter(torch.randn(8))
    weight.grad, bias.grad = torch.randn(8, 4), torch.randn(8)
    optimizer = LARS(param_groups([weight, bias], weight_decay), lr=lr, momentum=momentum,
                     weight_decay=weight_decay, trust_coefficient=eta)
    return weight, bias, optimizer


def test_groups_split_one_dimensional_parameters_out():
    weight, bias, optimizer = _setup()
    adapted, plain = optimizer.param_groups
    assert adapted["lars"] and adapted["weight_decay"] == 0.1
    assert adapted["params"] == [weight]
    assert not plain["lars"] and plain["weight_decay"] == 0.0
    assert plain["params"] == [bias]


def test_excluded_parameters_are_neither_decayed_nor_adapted():
    weight, bias, optimizer = _setup()
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    gw, gb = weight.grad.clone(), bias.grad.clone()
    optimizer.step()
    # bias: a plain SGD step, lr * grad: no decay term, no trust ratio.
    torch.testing.assert_close(bias.detach(), b0 - 0.5 * gb, rtol=0, atol=1e-7)
    # weight: lr * eta * ||w|| / ||g + wd w|| * (g + wd w)
    decayed = gw + 0.1 * w0
    ratio = 1e-3 * w0.norm() / decayed.norm()
    torch.testing.assert_close(weight.detach(), w0 - 0.5 * ratio * decayed, rtol=1e-6, atol=1e-7)


def test_momentum_accumulates_scaled_updates():
    weight, bias, optimizer = _setup(weight_decay=0.0, momentum=0.9)
    b0, gb = bias.detach().clone(), bias.grad.clone()
    optimizer.step()
    optimizer.step()  # same grad twice: v1 = lr g, v2 = 0.9 v1 + lr g
    torch.testing.assert_close(bias.detach(), b0 - 0.5 * gb - (0.9 * 0.5 + 0.5) * gb, rtol=1e-6, atol=1e-6)


def test_zero_weight_falls_back_to_unit_trust_ratio():
    weight = torch.nn.Parameter(torch.zeros(3, 3))
    weight.grad = torch.ones(3, 3)
    optimizer = LARS(param_groups([weight], 0.0), lr=0.1, momentum=0.0)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3, 3), -0.1))


def test_lr_schedule_warmup_then_cosine():
    peak, total, warmup = 2.0, 100, 10
    assert lr_at(0, total, warmup, peak) == 0.0
    assert lr_at(5, total, warmup, peak) == pytest.approx(1.0)
    assert lr_at(10, total, warmup, peak) == pytest.approx(peak)
    assert lr_at(55, total, warmup, peak) == pytest.approx(peak / 2)
    assert lr_at(100, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(k, total, warmup, peak) for k in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(0, total, 0, peak) == pytest.approx(peak)


def test_learning_rate_goes_into_the_momentum_buffer():
    """When the LR changes, past steps keep the LR they were taken with (v = m v + lr u;
    w -= v), unlike DeepMind's reference, which rescales the whole buffer (w -= lr (m mu + u))."""
    weight, bias, optimizer = _setup(weight_decay=0.0, momentum=0.9)
    b0, gb = bias.detach().clone(), bias.grad.clone()
    optimizer.step()  # lr 0.5
    for group in optimizer.param_groups:
        group["lr"] = 0.1
    optimizer.step()
    ours = b0 - 0.5 * gb - (0.9 * 0.5 + 0.1) * gb
    reference = b0 - 0.5 * gb - 0.1 * (0.9 + 1.0) * gb
    torch.testing.assert_close(bias.detach(), ours, rtol=1e-6, atol=1e-6)
    assert (bias.detach() - reference).abs().max() > 0.1 * gb.abs().max()
