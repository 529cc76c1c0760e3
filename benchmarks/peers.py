"""The three BYOL training steps that benchmarks/step_vs_peers.py times against each other.

Each runner owns one framework's model, optimizer and input pipeline and has the same two
calls: ``start_run(n)`` before a run of ``n`` steps (untimed) and ``step()`` for one full
training step. All three train a fresh ``byol_core.train.nets`` ResNet encoder built from the
same spec after ``torch.manual_seed(seed)``, so the three backbones start identical.

- ours: uint8 images resident on the device, byol_core's own training step
  (``byol_core.train.step.train_step``: both views made there, forward, backward, LARS, EMA) on
  its own recipe (warmup + cosine LR, tau schedule) and builders.
- lightly 1.6, as its BYOL example: ``BYOLView1Transform``/``BYOLView2Transform`` on PIL
  images in DataLoader workers, ``BYOLProjectionHead``/``BYOLPredictionHead``,
  ``update_momentum`` with ``cosine_schedule``, ``NegativeCosineSimilarity``, SGD lr 0.06.
- byol-pytorch 0.9, as its README: ``BYOL(net, image_size, hidden_layer="avgpool")`` with
  ``use_simplicial_embeddings=False`` (0.9 turns them on by default; off is vanilla BYOL),
  its own batched augmentations on the device, Adam lr 3e-4, ``update_moving_average()``.

With ``optimizer="lars"`` the peers use our LARS (same builder, param groups and settings,
at our schedule's peak LR) instead of their examples' optimizers.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from byol_core.train import graphed
from byol_core.train.augment import Augmenter
from byol_core.config import Params
from byol_core.device import exact_cudnn, synchronize
from byol_core.train.nets import EncoderSpec, build_encoder
from byol_core.train.optim import LARS
from byol_core.train.step import Recipe, build_optimizer, encoder_spec, new_state, train_step

INSTALL_HINT = "pip install -e '.[bench]' (see docs/benchmarks.md)"
PEERS = {"lightly": "lightly", "byol-pytorch": "byol_pytorch"}  # distribution -> module


class MissingPeer(RuntimeError):
    pass


def require(dist: str) -> None:
    """Import a peer or raise MissingPeer saying how to install it."""
    try:
        importlib.import_module(PEERS[dist])
    except ImportError as exc:
        raise MissingPeer(f"{dist} is not importable ({exc}). Install the peers with {INSTALL_HINT}, "
                          "or pass --skip-missing.") from None


@dataclass(frozen=True)
class Setup:
    """What all three runners share."""

    params: Params  # params.yaml with the benchmark's overrides (model, pretrain batch size, precision, compile)
    device: torch.device
    size: int
    peer_amp: bool  # peers under bf16 autocast too
    optimizer: str  # own | lars
    workers: int  # lightly's DataLoader workers
    recipe: Recipe  # ours: pretrain's recipe over the benchmark's images

    @property
    def batch(self) -> int:
        return self.params.pretrain.batch_size

    @property
    def spec(self) -> EncoderSpec:
        return encoder_spec(self.params, in_channels=3)

    def backbone(self) -> nn.Module:
        torch.manual_seed(self.params.seed)
        return build_encoder(self.spec)

    def lars(self, params: list[nn.Parameter]) -> LARS:
        """Our LARS for a peer, at our schedule's peak LR throughout."""
        return build_optimizer(params, self.params.pretrain, lr=self.recipe.schedule.peak_lr)

    def peer_autocast(self):
        if self.peer_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class _DeviceBatches:
    """Random batches of indices into device-resident images, drawn on the device."""

    def __init__(self, images: torch.Tensor, batch: int, seed: int) -> None:
        self.images, self.batch = images, batch
        self.gen = torch.Generator(device=images.device).manual_seed(seed)
        self.order, self.i = None, 0

    def start(self, steps: int) -> None:
        n = len(self.images)
        reps = -(-steps * self.batch // n)
        self.order = torch.cat([torch.randperm(n, generator=self.gen, device=self.images.device) for _ in range(reps)])
        self.i = 0

    def next(self) -> torch.Tensor:
        idx = self.order[self.i * self.batch:(self.i + 1) * self.batch]
        self.i += 1
        return self.images[idx]


class Ours:
    name = "ours"

    def __init__(self, setup: Setup, images: torch.Tensor) -> None:
        """images: uint8 (N, 3, H, W) on the device."""
        p = setup.params
        self.setup = setup
        self.state = new_state(p, 3, setup.recipe, setup.device)
        if p.pretrain.compile:
            self.state.forward = torch.compile(self.state.model)
        self.graph = graphed.for_run(p.pretrain, setup.device)  # as pretraining: a CUDA graph on one GPU
        x = images[:10_000].float() / 255  # per-channel statistics, as ingest writes them to the data card
        gen = torch.Generator(device=setup.device).manual_seed(p.seed + 1)
        self.augment = Augmenter.for_data(p.augment, setup.size, x.mean((0, 2, 3)), x.std((0, 2, 3)), gen)
        self.batches = _DeviceBatches(images, setup.batch, p.seed)

    def start_run(self, steps: int) -> None:
        self.batches.start(steps)

    def step(self) -> None:
        with exact_cudnn():  # pretraining's cuDNN, for our steps alone: the peers keep torch's defaults
            (self.graph or train_step)(self.state, self.batches.next(), self.augment)

    def make_views(self) -> None:
        """Both views alone (the augmentation share of the step)."""
        self.augment(self.batches.next())

    def breakdown(self) -> dict[str, float]:
        """One real training step, the device synced and the clock read at the end of each
        of its phases (seconds; "augment" includes fetching the batch)."""
        device, times = self.setup.device, {}
        synchronize(device)
        started = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal started
            synchronize(device)
            now = time.perf_counter()
            times[name], started = now - started, now

        train_step(self.state, self.batches.next(), self.augment, phase)
        return times


class _PILImages(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) as PIL images through a transform, like a torchvision dataset."""

    def __init__(self, images: np.ndarray, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), 0


class _ExactDraws(torch.utils.data.Sampler):
    """Shuffled indices, exactly ``count`` of them per epoch: each timed run is one epoch,
    so the workers are idle (nothing prefetched, nothing left over) between runs."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.count = n, 0
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        reps = -(-self.count // self.n)
        order = torch.cat([torch.randperm(self.n, generator=self.gen) for _ in range(reps)])
        return iter(order[:self.count].tolist())


class _LightlyBYOL(nn.Module):
    """lightly's BYOL example model, on our backbone."""

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_hidden: int, proj_out: int,
                 pred_hidden: int) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, proj_hidden, proj_out)
        self.prediction_head = BYOLPredictionHead(proj_out, pred_hidden, proj_out)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        y = self.backbone(x).flatten(start_dim=1)
        return self.prediction_head(self.projection_head(y))

    def forward_momentum(self, x):
        y = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(y).detach()


class Lightly:
    name = "lightly"

    def __init__(self, setup: Setup, images_hwc: np.ndarray) -> None:
        """images_hwc: uint8 (N, H, W, 3) in host memory."""
        from lightly.loss import NegativeCosineSimilarity
        from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

        m = setup.params.model
        self.setup = setup
        self.model = _LightlyBYOL(setup.backbone(), setup.spec.feature_dim, m.projector_hidden, m.projector_out,
                                  m.predictor_hidden).to(setup.device)
        self.criterion = NegativeCosineSimilarity()
        if setup.optimizer == "lars":
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = setup.lars(trainable)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.06)
        # The example's CIFAR-10 setting: no blur at 32 px (ours turns blur off there too).
        blur = 0.0 if setup.size <= 32 else None
        kw = {} if blur is None else {"gaussian_blur": blur}
        transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=setup.size, **kw),
                                  view_2_transform=BYOLView2Transform(input_size=setup.size, **kw))
        self.sampler = _ExactDraws(len(images_hwc), setup.params.seed)
        self.loader = torch.utils.data.DataLoader(
            _PILImages(images_hwc, transform), batch_size=setup.batch, sampler=self.sampler, drop_last=True,
            num_workers=setup.workers, persistent_workers=setup.workers > 0)
        self.it, self.k, self.total = None, 0, 1

    def start_run(self, steps: int) -> None:
        self.sampler.count = steps * self.setup.batch
        self.it, self.k, self.total = iter(self.loader), 0, steps

    def worker_pids(self) -> list[int]:
        workers = getattr(self.loader._iterator, "_workers", None) or []
        return [w.pid for w in workers]

    def step(self) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        model, device = self.model, self.setup.device
        (x0, x1), _ = next(self.it)
        momentum = cosine_schedule(self.k, self.total, self.setup.params.pretrain.tau_base, 1)
        self.k += 1
        update_momentum(model.backbone, model.backbone_momentum, m=momentum)
        update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
        x0, x1 = x0.to(device), x1.to(device)
        with self.setup.peer_autocast():
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


class ByolPytorch:
    name = "byol-pytorch"

    def __init__(self, setup: Setup, images: torch.Tensor) -> None:
        """images: uint8 (N, 3, H, W) on the device (its README feeds float batches)."""
        from byol_pytorch import BYOL

        m = setup.params.model
        if m.predictor_hidden != m.projector_hidden:
            raise ValueError("byol-pytorch sizes its predictor's hidden layer like the projector's: "
                             "use --pred-hidden equal to --proj-hidden")
        self.setup = setup
        self.learner = BYOL(setup.backbone().to(setup.device), image_size=setup.size, hidden_layer="avgpool",
                            projection_size=m.projector_out, projection_hidden_size=m.projector_hidden,
                            moving_average_decay=setup.params.pretrain.tau_base, use_simplicial_embeddings=False)
        if setup.optimizer == "lars":
            self.optimizer = setup.lars([p for p in self.learner.parameters() if p.requires_grad])
        else:
            self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=3e-4)
        self.batches = _DeviceBatches(images, setup.batch, setup.params.seed)

    def start_run(self, steps: int) -> None:
        self.batches.start(steps)

    def step(self) -> None:
        images = self.batches.next().float().div_(255)
        with self.setup.peer_autocast():
            loss = self.learner(images)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.learner.update_moving_average()


def build(name: str, setup: Setup, images: torch.Tensor, images_hwc: np.ndarray):
    if name == "ours":
        return Ours(setup, images)
    if name == "lightly":
        return Lightly(setup, images_hwc)
    return ByolPytorch(setup, images)
