"""The one training step: what it takes, what it reports, and that timing its phases
changes nothing it computes."""

import torch

from byol_core.train.augment import Augmenter
from byol_core.config import parse_params
from byol_core.train.step import Recipe, new_state, train_step
from conftest import TINY, params_dict

PARAMS = parse_params(params_dict(**TINY))
CPU = torch.device("cpu")
IMAGES = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _state():
    return new_state(PARAMS, 1, Recipe.for_run(PARAMS.pretrain, 256), CPU)  # 4 steps an epoch, 2 of warmup


def _run(steps: int, phase=None, state=None):
    """A fresh state (or ``state``) after ``steps`` steps on IMAGES; the step metrics of each."""
    state = state or _state()
    augment = Augmenter.for_data(PARAMS.augment, 28, torch.zeros(1), torch.ones(1), torch.Generator().manual_seed(0))
    kwargs = {} if phase is None else {"phase": phase}
    return state, [train_step(state, IMAGES, augment, **kwargs) for _ in range(steps)]


def test_phases_are_reported_in_order_and_change_nothing():
    plain, plain_metrics = _run(3)
    seen = []
    timed, timed_metrics = _run(3, phase=seen.append)
    assert seen == ["augment", "forward", "backward", "optimizer", "ema"] * 3
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), timed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [float(m.loss) for m in plain_metrics] == [float(m.loss) for m in timed_metrics]


def test_step_follows_the_recipe_and_reports_what_it_used():
    state, metrics = _run(3)
    assert state.step == 3
    assert [m.lr for m in metrics] == [state.recipe.lr(k) for k in range(3)]
    assert [m.tau for m in metrics] == [state.recipe.tau(k) for k in range(3)]
    peak = state.recipe.schedule.peak_lr
    assert [m.lr for m in metrics] == [0.0, peak / 2, peak]  # linear warmup over 2 steps
    assert metrics[0].tau == PARAMS.pretrain.tau_base < metrics[1].tau < metrics[2].tau < 1.0
    assert state.optimizer.param_groups[0]["lr"] == metrics[-1].lr
    for m in metrics:
        assert m.loss.shape == () and 0.0 <= float(m.loss) <= 8.0
        assert m.collapse_std.shape == () and float(m.collapse_std) > 0.0


def test_target_follows_the_online_net_by_the_ema_after_the_optimizer_step():
    state = _state()
    checked = []

    def phase(name):
        online, target = list(state.model.online.parameters()), list(state.model.target.parameters())
        if name == "optimizer":  # updated online weights, target not yet moved
            phase.expected = [t.lerp(o, 1.0 - state.recipe.tau(state.step)) for t, o in zip(target, online)]
        elif name == "ema":
            checked.append(all(torch.equal(t, e) for t, e in zip(target, phase.expected)))

    _run(3, phase=phase, state=state)
    assert checked == [True, True, True]
    online, target = state.model.online.state_dict(), state.model.target.state_dict()
    assert any(not torch.equal(online[k], target[k]) for k in online if online[k].is_floating_point())
