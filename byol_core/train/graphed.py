"""The whole training step as one CUDA graph: captured once, replayed every step.

At ResNet-18 size a BYOL step launches well over a thousand small kernels (both views,
two online and two target forwards, the backward, LARS, the EMA), and on a fast GPU the
host's Python and launch costs, not the GPU, set the pace. A CUDA graph records those
launches once and replays them as one. What a replay needs is what the capture saw:

- the batch arrives in one fixed input buffer (copied in before each replay);
- the LR and the EMA weight ``1 - tau`` are 0-d device tensors, filled before each
  replay (:func:`byol_core.train.step.update` takes either numbers or such tensors);
- the views' random draws come from one generator registered with the graph, so each
  replay draws afresh; it is given each epoch's seed, as the eager loop's generators;
- the weights, BatchNorm buffers, LARS momentum and gradients keep their addresses.

Capturing needs a few eager steps first (cuDNN picks its kernels, autograd and LARS make
their buffers). Those steps run on a copy of every value they touch, which is then put
back, so the run starts from exactly the state it had: a resumed run continues where the
saved one stopped. The graph is a pure speed-up; the maths is byol_core.train.step.update's.
"""

from __future__ import annotations

import torch

from byol_core.train.augment import Augmenter
from byol_core.schema.pretrain import PretrainConfig
from byol_core.train.step import StepMetrics, TrainState, update

WARMUP_STEPS = 3  # eager steps before the capture (torch's CUDA-graph notes use 3)


def usable(device: torch.device, processes: int, compiled: bool) -> bool:
    """Graphs here cover one CUDA process without torch.compile (DDP's all-reduces and
    compile's own graphs are outside what this module captures)."""
    return device.type == "cuda" and processes == 1 and not compiled


def for_run(cfg: PretrainConfig, device: torch.device, processes: int = 1) -> GraphedStep | None:
    """The graphed step where ``pretrain.cuda_graph`` asks for it and it applies, else None
    (the eager :func:`byol_core.train.step.train_step`)."""
    return GraphedStep() if cfg.cuda_graph and usable(device, processes, cfg.compile) else None


class GraphedStep:
    """Drop-in for :func:`byol_core.train.step.train_step` (same arguments, same metrics) that
    captures the step on its first call and replays it afterwards.

    Its metrics' loss and collapse tensors are the graph's outputs, overwritten by the next
    replay: add them up or copy them before the next call (the loop's tally adds them at
    once). ``phase`` is accepted and never called: a graph has no phases to time.

    ``capture=False`` runs the same body eagerly from the same buffers (every call, no
    graph): the path tests take on machines without CUDA."""

    def __init__(self, capture: bool = True, warmup_steps: int = WARMUP_STEPS) -> None:
        self.capture, self.warmup_steps = capture, warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.images: torch.Tensor | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._seeded_from: torch.Generator | None = None

    def __call__(self, state: TrainState, images: torch.Tensor, augment: Augmenter,
                 phase=None) -> StepMetrics:
        if self.images is None:
            self._build(state, images, augment)
        if images.shape != self.images.shape or images.dtype != self.images.dtype:
            raise ValueError(f"a graphed step takes batches of one shape: {tuple(self.images.shape)} "
                             f"{self.images.dtype}, not {tuple(images.shape)} {images.dtype}")
        if augment.gen is not self._seeded_from:
            # A new epoch's generator: draw on from its state, as the eager step would.
            self.gen.set_state(augment.gen.get_state())
            self._seeded_from = augment.gen
        lr, tau = self._fill_scalars(state)
        self.images.copy_(images)
        if self.graph is not None:
            self.graph.replay()
            loss, collapse = self.outputs
        else:
            loss, collapse = self._body(state)
        for group in state.optimizer.param_groups:
            group["lr"] = lr  # what a checkpoint of the optimizer holds, as after an eager step
        state.step += 1
        return StepMetrics(loss, collapse, lr, tau)

    def _fill_scalars(self, state: TrainState) -> tuple[float, float]:
        """This step's LR and EMA weight into the tensors the body reads; returns (lr, tau)."""
        lr, tau = state.recipe.lr(state.step), state.recipe.tau(state.step)
        self.lr.fill_(lr)
        self.ema_weight.fill_(1.0 - tau)
        return lr, tau

    def _body(self, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
        return update(state, self.images, self.augment, self.lr, self.ema_weight,
                      autocast_cache=not self.capture)

    def _build(self, state: TrainState, images: torch.Tensor, augment: Augmenter) -> None:
        device = images.device
        self.images = images.clone()
        self.lr = torch.zeros((), device=device)
        self.ema_weight = torch.zeros((), device=device)
        self.gen = torch.Generator(device=device)  # given each epoch's state by __call__
        self.augment = augment.reseeded(self.gen)
        if not self.capture:
            return
        saved = _Saved(state, self.gen)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self._fill_scalars(state)
                self._body(state)
        torch.cuda.current_stream(device).wait_stream(side)
        saved.put_back()
        state.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(self.gen)
        # thread_local: the streamed loader's thread may wait on its copy events meanwhile.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = self._body(state)
        torch.cuda.synchronize(device)
        # Capturing ran nothing: the state is as it was, and the first replay draws from
        # the epoch's generator (copied in by __call__).


class _Saved:
    """A copy of everything the warm-up steps change: weights, BatchNorm buffers, LARS
    momentum (zeros where the run has none yet, which is what a first step starts from) and
    the views' generator."""

    def __init__(self, state: TrainState, gen: torch.Generator) -> None:
        self.state, self.gen = state, gen
        self.tensors = [(t, t.detach().clone()) for t in (*state.model.parameters(), *state.model.buffers())]
        self.momentum = {p: s["momentum_buffer"].clone() for p, s in state.optimizer.state.items()
                         if "momentum_buffer" in s}
        self.rng = gen.get_state()

    @torch.no_grad()
    def put_back(self) -> None:
        for live, copy in self.tensors:
            live.copy_(copy)
        for p, s in self.state.optimizer.state.items():
            if "momentum_buffer" in s:
                if p in self.momentum:
                    s["momentum_buffer"].copy_(self.momentum[p])
                else:
                    s["momentum_buffer"].zero_()
        self.gen.set_state(self.rng)
