"""The graphed training step (byol_core.train.graphed): the same maths as the eager step from
the same state, and a warm-up that leaves no trace. The capture itself needs CUDA; those
tests run where a GPU is (benchmarks/gpu_check.sh)."""

import pytest
import torch

from byol_core.train import graphed
from byol_core.train.augment import Augmenter
from byol_core.config import parse_params
from byol_core.train.step import Recipe, new_state, train_step
from conftest import TINY, params_dict

PARAMS = parse_params(params_dict(**TINY))
CUDA = torch.cuda.is_available()


def _state(device):
    return new_state(PARAMS, 1, Recipe.for_run(PARAMS.pretrain, 256), device)  # 4 steps an epoch


def _images(device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=gen).to(device)


def _augment(device, seed):
    return Augmenter.for_data(PARAMS.augment, 28, torch.zeros(1, device=device), torch.ones(1, device=device),
                              torch.Generator(device=device).manual_seed(seed))


def _train(step, device, epochs=2, steps=3):
    """``epochs`` epochs of ``steps`` steps, each epoch with its own generator, as the loop."""
    state = _state(device)
    losses = []
    for epoch in range(epochs):
        augment = _augment(device, 100 + epoch)
        for i in range(steps):
            losses.append(step(state, _images(device, 10 * epoch + i), augment).loss.clone())
    return state, torch.stack(losses)


def _tensors(state):
    return {**state.model.state_dict(), **{f"momentum.{i}": s["momentum_buffer"]
                                           for i, s in enumerate(state.optimizer.state.values())}}


def test_graph_body_with_device_scalars_is_the_eager_step_bit_for_bit():
    eager, eager_losses = _train(train_step, torch.device("cpu"))
    body, body_losses = _train(graphed.GraphedStep(capture=False), torch.device("cpu"))
    assert eager.step == body.step == 6
    assert torch.equal(eager_losses, body_losses)
    a, b = _tensors(eager), _tensors(body)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The optimizer holds numbers, as after eager steps (a checkpoint stays the same kind).
    assert all(isinstance(g["lr"], float) for g in body.optimizer.param_groups)


def test_warm_up_leaves_the_state_and_the_draws_as_they_were():
    device = torch.device("cpu")
    state = _state(device)
    augment = _augment(device, 5)
    train_step(state, _images(device), augment)  # a run with momentum already, like a resumed one
    before = {k: v.clone() for k, v in _tensors(state).items()}
    rng = augment.gen.get_state()
    saved = graphed._Saved(state, augment.gen)
    for _ in range(3):
        train_step(state, _images(device, 2), augment)
    moved = _tensors(state)
    assert any(not torch.equal(before[k], moved[k]) for k in before)
    saved.put_back()
    after = _tensors(state)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert torch.equal(augment.gen.get_state(), rng)


def test_warm_up_of_a_fresh_run_leaves_zero_momentum():
    device = torch.device("cpu")
    state = _state(device)
    augment = _augment(device, 5)
    saved = graphed._Saved(state, augment.gen)
    train_step(state, _images(device), augment)
    saved.put_back()
    buffers = [s["momentum_buffer"] for s in state.optimizer.state.values()]
    assert buffers and all(int(b.count_nonzero()) == 0 for b in buffers)


def test_graphs_only_where_they_apply():
    assert graphed.usable(torch.device("cuda"), 1, False)
    assert not graphed.usable(torch.device("cpu"), 1, False)
    assert not graphed.usable(torch.device("cuda"), 2, False)
    assert not graphed.usable(torch.device("cuda"), 1, True)


@pytest.fixture
def exact_cudnn():
    """cuDNN as pretraining sets it (byol_core.device.exact_kernels), put back afterwards."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        yield


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_captured_generator_draws_from_the_state_it_is_given_before_each_replay():
    """The graph's random draws follow its generator's state as set between replays (each
    epoch's seed), exactly as eager draws from that state would."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = torch.empty(1000, device="cuda")
    torch.rand(1000, generator=gen, device="cuda")  # warm-up
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        out.copy_(torch.rand(1000, generator=gen, device="cuda"))
    for seed in (7, 8, 7):
        epoch = torch.Generator(device="cuda").manual_seed(seed)
        gen.set_state(epoch.get_state())
        graph.replay()
        first = out.clone()
        graph.replay()
        eager = torch.Generator(device="cuda").manual_seed(seed)
        expected = [torch.rand(1000, generator=eager, device="cuda") for _ in range(2)]
        assert torch.equal(first, expected[0]) and torch.equal(out, expected[1]), seed


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_captured_step_is_the_eager_step_bit_for_bit_on_cuda(exact_cudnn):
    device = torch.device("cuda")
    eager, eager_losses = _train(train_step, device, epochs=2, steps=4)
    graph, graph_losses = _train(graphed.GraphedStep(), device, epochs=2, steps=4)
    a, b = _tensors(eager), _tensors(graph)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    print(f"graph vs eager: max |loss diff| {float((graph_losses - eager_losses).abs().max()):.3g}, "
          f"max |weight diff| {worst:.3g}")
    # Each replay draws new views from its epoch's generator: the losses differ step to step.
    assert len(set(graph_losses.tolist())) == len(graph_losses)
    assert torch.equal(graph_losses, eager_losses)
    for name in a:
        assert torch.equal(a[name], b[name]), name
