"""``model``, ``augment`` and ``pretrain``: what the pretrain stage alone reads, the training
length derived from them (:func:`derive_schedule`), never written down, and the stage's
params view (:class:`PretrainParams`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator

from byol_core.errors import ByolError
from byol_core.schema.base import (SAME_WEIGHTS, Bool, Float, Int, Only, PositiveInt, Probability, Section, View,
                                   ordered_pair)
from byol_core.schema.paths import PathsConfig
from byol_core.schema.probe import EvaluateConfig, KnnConfig
from byol_core.schema.run import Device, Seed

HeadWidth = Annotated[Int, Field(ge=1, le=65536)]  # an MLP layer; the paper's largest is 4096
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]  # a file's digest, lower-case hex


class ModelConfig(Section):
    arch: Literal["resnet18", "resnet50"]
    width: Annotated[Float, Field(gt=0.0, le=4.0)]  # multiplier on ResNet's 64 base channels
    small_stem: Bool  # 3x3 stride-1 first conv and no max-pool, for images of ~32 px
    pool: Annotated[Int, Field(ge=1, le=8)]  # the last feature map averaged over pool x pool cells
    projector_hidden: HeadWidth
    projector_out: HeadWidth
    predictor_hidden: HeadWidth


class AugmentConfig(Section):
    crop_scale: tuple[Annotated[Float, Field(gt=0.0, le=1.0)], Annotated[Float, Field(gt=0.0, le=1.0)]]
    crop_ratio: tuple[Annotated[Float, Field(gt=0.0)], Annotated[Float, Field(gt=0.0)]]
    flip_p: Probability
    jitter_p: Probability
    brightness: Annotated[Float, Field(ge=0.0, le=1.0)]
    contrast: Annotated[Float, Field(ge=0.0, le=1.0)]
    saturation: Annotated[Float, Field(ge=0.0, le=1.0)]
    hue: Annotated[Float, Field(ge=0.0, le=0.5)]
    grayscale_p: Probability
    blur: Literal["auto", "on", "off"]  # auto: off for images <= 32 px, as solo-learn on CIFAR
    blur_p: tuple[Probability, Probability]  # (view 1, view 2)
    blur_sigma: tuple[Annotated[Float, Field(gt=0.0)], Annotated[Float, Field(gt=0.0)]]
    solarize_p: tuple[Probability, Probability]  # (view 1, view 2)

    @field_validator("blur", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        # YAML 1.1 (PyYAML) reads a bare on/off as a boolean, and `dvc exp run -S
        # augment.blur=off` writes it bare: take the booleans as the words they were.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("crop_scale", "crop_ratio", "blur_sigma", mode="after")
    @classmethod
    def _ordered(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        return ordered_pair(value, info.field_name)


class PretrainConfig(Section):
    epochs: PositiveInt
    init: Literal["scratch", "previous"]  # previous: begin from paths.start (byol_core.train.warmstart)
    warm_epochs: PositiveInt  # what a warm start trains instead of epochs
    init_sha256: Sha256 | None  # paths.start's digest: the start as a declared input (written by `byol promote`)
    batch_size: Annotated[Int, Field(ge=2)]  # BatchNorm needs at least two samples
    base_lr: Annotated[Float, Field(gt=0.0)]  # peak LR = base_lr * batch_size / 256
    warmup_epochs: Annotated[Float, Field(ge=0.0)]
    weight_decay: Annotated[Float, Field(ge=0.0)]
    momentum: Annotated[Float, Field(ge=0.0, lt=1.0)]
    trust_coefficient: Annotated[Float, Field(gt=0.0)]
    tau_base: Probability
    precision: Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on CUDA, fp32 on CPU
    checkpoint_every: Annotated[PositiveInt, SAME_WEIGHTS]  # epochs between resume checkpoints
    log_every: Annotated[PositiveInt, SAME_WEIGHTS]  # steps between progress updates (each one syncs with the device)
    monitor_bank: Annotated[PositiveInt, SAME_WEIGHTS]  # labelled train images for the per-epoch kNN monitor
    monitor_queries: Annotated[PositiveInt, SAME_WEIGHTS]  # test images it classifies
    # The global batch and each sample's views do not depend on the process count: the same weights.
    devices: Annotated[PositiveInt, SAME_WEIGHTS]  # training processes per node (GPUs on CUDA); > 1 launches through torchrun
    nodes: Annotated[PositiveInt, SAME_WEIGHTS]  # machines; > 1 needs torchrun's rendezvous settings on each
    compile: Bool  # torch.compile the training forward (slow first step; worth it for long GPU runs)
    cuda_graph: Bool  # one CUDA process, no compile: the whole step as one CUDA graph (byol_core.train.graphed)
    # Resident or streamed, the batches are the same.
    resident_max_mb: Annotated[Literal["auto"] | Annotated[Float, Field(ge=0.0)], SAME_WEIGHTS]  # data up to this stays on the device

    @model_validator(mode="after")
    def _warmup_within_run(self) -> PretrainConfig:
        # A warm run's warmup (run_warmup_epochs) is this share of warm_epochs or less, so this
        # check keeps it within the warm run too.
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self

    @model_validator(mode="after")
    def _warm_start_names_its_start(self) -> PretrainConfig:
        if self.init == "previous" and self.init_sha256 is None:
            raise ValueError("init is previous but init_sha256 is null: run `byol promote` (it copies the last "
                             "pretrain's full state to paths.start and writes its sha256 here), or set init: scratch")
        return self

    @property
    def warm(self) -> bool:
        """Whether this run begins from the promoted state at paths.start."""
        return self.init == "previous"

    @property
    def run_epochs(self) -> int:
        """The epochs this run trains: warm_epochs for a warm start, else epochs."""
        return self.warm_epochs if self.warm else self.epochs

    @property
    def run_warmup_epochs(self) -> float:
        """This run's LR warmup. A warm start's optimizer begins afresh (no momentum), so it warms
        up too, for the share of its run that warmup_epochs is of epochs, and never longer than
        warmup_epochs: with the defaults 0.5 of 3 epochs, a 2-epoch warm run warms up for 1/3."""
        if not self.warm:
            return self.warmup_epochs
        return self.warmup_epochs * min(1.0, self.warm_epochs / self.epochs)

    @property
    def processes(self) -> int:
        return self.devices * self.nodes

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> PretrainConfig:
        if self.batch_size % self.processes or self.batch_size // self.processes < 2:
            raise ValueError(f"batch_size ({self.batch_size}) is the global batch: it must split into equal "
                             f"shards of at least 2 over devices x nodes = {self.processes} processes")
        return self


class PretrainParams(View):
    """What the pretrain stage reads: the training recipe, and the kNN monitor's settings
    (knn, and evaluate's feature batch) for its per-epoch check."""

    seed: Seed
    device: Device
    paths: Annotated[PathsConfig, Only("prepared", "models", "start", "metrics", "resume")]
    model: ModelConfig
    augment: AugmentConfig
    pretrain: PretrainConfig
    knn: KnnConfig
    evaluate: Annotated[EvaluateConfig, Only("batch_size")]


@dataclass(frozen=True)
class Schedule:
    """Training-length values derived from the params and the dataset size."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def derive_schedule(cfg: PretrainConfig, n_train: int) -> Schedule:
    """Steps come from the run's epochs (``run_epochs``: a warm start's own) and batch size
    (the last partial batch is dropped); the peak LR follows the paper's linear scaling
    rule, ``base_lr * batch_size / 256``."""
    if cfg.batch_size > n_train:
        raise ByolError(f"pretrain.batch_size ({cfg.batch_size}) is larger than the {n_train} "
                        "prepared training images: lower pretrain.batch_size or ingest more data.")
    steps_per_epoch = n_train // cfg.batch_size
    return Schedule(
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.run_epochs,
        warmup_steps=math.floor(cfg.run_warmup_epochs * steps_per_epoch),
        peak_lr=cfg.base_lr * cfg.batch_size / 256,
    )
