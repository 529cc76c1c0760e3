"""Typed, validated params: ``params.yaml`` parsed once into frozen config.

Every value that changes an output lives in ``params.yaml``; nothing here has a default,
so a missing key is reported instead of silently filled in. Values that follow from
others (steps, warmup steps, the batch-scaled learning rate) are computed by
:func:`derive_schedule`, never written down.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from byol_core.errors import ByolError, brief

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
HeadWidth = Annotated[int, Field(ge=1, le=65536)]  # an MLP layer; the paper's largest is 4096


class _Section(BaseModel):
    # No NaN or infinity anywhere: every number in params.yaml must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it."""
    return path == folder or folder in path.parents


def _anchored(path: Path, info: ValidationInfo) -> Path:
    """Relative paths are taken from the params file's folder (passed as context "root"),
    and must stay inside it: a ``..`` or a symlink that leads out of the project is refused,
    so a shared params file cannot make a stage read or replace files elsewhere. An
    absolute path is the user's explicit choice and is taken as written."""
    root = (info.context or {}).get("root")
    if path.is_absolute() or root is None:
        return path
    anchored = Path(root) / path
    real_root, real = Path(root).resolve(), anchored.resolve()
    if not _within(real, real_root):
        how = "through '..'" if ".." in path.parts else "through a symlink"
        raise ValueError(f"'{path}' leads outside the project folder {real_root} ({how}, to {real}). "
                         "Use a path inside the project, or write the absolute path if you mean to go outside it")
    return anchored


def _ordered_pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value)}")
    return value


class PathsConfig(_Section):
    """Where the stages write. Relative paths are taken from the params file's directory."""

    prepared: Path
    models: Path
    metrics: Path
    resume: Path
    cache: Path
    embeddings: Path

    @field_validator("*", mode="after")
    @classmethod
    def _anchor(cls, value: Path, info: ValidationInfo) -> Path:
        return _anchored(value, info)

    @model_validator(mode="after")
    def _prepared_is_its_own_folder(self, info: ValidationInfo) -> PathsConfig:
        # ingest replaces paths.prepared wholesale, so it must not hold anything else.
        prepared = self.prepared.resolve()
        root = (info.context or {}).get("root")
        if root is not None and _within(Path(root).resolve(), prepared):
            raise ValueError(f"paths.prepared ({self.prepared}) is the project folder or above it; "
                             "ingest replaces that folder wholesale: use a folder of its own, e.g. data/prepared")
        for name in ("models", "metrics", "resume", "cache", "embeddings"):
            if _within(getattr(self, name).resolve(), prepared):
                raise ValueError(f"paths.{name} ({getattr(self, name)}) lies inside paths.prepared "
                                 f"({self.prepared}), which ingest replaces wholesale: move one of them")
        return self

    # The file names inside those folders: fixed, so each path is written in one place.
    @property
    def encoder(self) -> Path:
        return self.models / "encoder.pt"

    @property
    def checkpoint(self) -> Path:
        return self.models / "checkpoint.pt"

    @property
    def onnx(self) -> Path:
        return self.models / "encoder.onnx"

    @property
    def onnx_meta(self) -> Path:
        return self.models / "encoder.onnx.json"

    @property
    def pretrain_metrics(self) -> Path:
        return self.metrics / "pretrain.json"

    @property
    def pretrain_curve(self) -> Path:
        return self.metrics / "pretrain_curve.csv"

    @property
    def pretrain_steps(self) -> Path:
        return self.metrics / "pretrain_steps.csv"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / "eval.json"

    @property
    def eval_predictions(self) -> Path:
        return self.metrics / "eval_predictions.csv"

    @property
    def export_metrics(self) -> Path:
        return self.metrics / "export.json"

    @property
    def eval_label_efficiency(self) -> Path:
        return self.metrics / "label_efficiency.png"

    @property
    def embeddings_file(self) -> Path:
        return self.embeddings / "embeddings.parquet"

    @property
    def embed_metrics(self) -> Path:
        return self.metrics / "embed.json"

    @property
    def neighbours_png(self) -> Path:
        return self.metrics / "neighbours.png"

    @property
    def embedding_map_png(self) -> Path:
        return self.metrics / "embedding_map.png"

    @property
    def resume_state(self) -> Path:
        """Crash-resume state of an unfinished pretrain; outside every DVC output."""
        return self.resume / "pretrain-state.pt"


class DataConfig(_Section):
    source: Literal["fashion-mnist", "cifar10", "cifar100", "stl10", "imagefolder"]
    source_dir: Path  # the folder holding the source files (a DVC dependency of ingest)
    channels: Literal[1, 3] | None  # null: the source's own (1 for Fashion-MNIST, else 3)
    image_size: Annotated[int, Field(ge=8, le=8192)] | None  # null: native size; else short side, centre crop
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]  # imagefolder without train/ and test/
    on_corrupt: Literal["fail", "skip"]  # an unreadable, too small or non-image file
    max_train: PositiveInt | None  # null: all; else the first N images of the split
    max_test: PositiveInt | None
    max_unlabeled: PositiveInt | None
    shard_mb: Annotated[float, Field(gt=0.0, le=4096.0)]  # the largest prepared shard file, in MiB

    @field_validator("source_dir", mode="after")
    @classmethod
    def _anchor(cls, value: Path, info: ValidationInfo) -> Path:
        return _anchored(value, info)

    @model_validator(mode="after")
    def _folder_needs_a_size(self) -> DataConfig:
        if self.source == "imagefolder" and self.image_size is None:
            raise ValueError("data.image_size: an imagefolder source has mixed sizes, so it needs "
                             "an image_size (e.g. 32 or 96)")
        return self


class ModelConfig(_Section):
    arch: Literal["resnet18", "resnet50"]
    width: Annotated[float, Field(gt=0.0, le=4.0)]  # multiplier on ResNet's 64 base channels
    small_stem: bool  # 3x3 stride-1 first conv and no max-pool, for images of ~32 px
    projector_hidden: HeadWidth
    projector_out: HeadWidth
    predictor_hidden: HeadWidth


class AugmentConfig(_Section):
    crop_scale: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]]
    crop_ratio: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]]
    flip_p: Probability
    jitter_p: Probability
    brightness: Annotated[float, Field(ge=0.0, le=1.0)]
    contrast: Annotated[float, Field(ge=0.0, le=1.0)]
    saturation: Annotated[float, Field(ge=0.0, le=1.0)]
    hue: Annotated[float, Field(ge=0.0, le=0.5)]
    grayscale_p: Probability
    blur: Literal["auto", "on", "off"]  # auto: off for images <= 32 px, as solo-learn on CIFAR
    blur_p: tuple[Probability, Probability]  # (view 1, view 2)
    blur_sigma: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]]
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
        return _ordered_pair(value, info.field_name)


class PretrainConfig(_Section):
    epochs: PositiveInt
    batch_size: Annotated[int, Field(ge=2)]  # BatchNorm needs at least two samples
    base_lr: Annotated[float, Field(gt=0.0)]  # peak LR = base_lr * batch_size / 256
    warmup_epochs: Annotated[float, Field(ge=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    trust_coefficient: Annotated[float, Field(gt=0.0)]
    tau_base: Probability
    precision: Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on CUDA, fp32 on CPU
    checkpoint_every: PositiveInt  # epochs between resume checkpoints
    log_every: PositiveInt  # steps between progress updates (each one syncs with the device)
    monitor_bank: PositiveInt  # labelled train images for the per-epoch kNN monitor
    monitor_queries: PositiveInt  # test images it classifies
    devices: PositiveInt  # training processes per node (GPUs on CUDA); > 1 launches through torchrun
    nodes: PositiveInt  # machines; > 1 needs torchrun's rendezvous settings on each
    compile: bool  # torch.compile the training forward (slow first step; worth it for long GPU runs)
    resident_max_mb: Literal["auto"] | Annotated[float, Field(ge=0.0)]  # data up to this stays on the device

    @model_validator(mode="after")
    def _warmup_within_run(self) -> PretrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self

    @property
    def processes(self) -> int:
        return self.devices * self.nodes

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> PretrainConfig:
        if self.batch_size % self.processes or self.batch_size // self.processes < 2:
            raise ValueError(f"batch_size ({self.batch_size}) is the global batch: it must split into equal "
                             f"shards of at least 2 over devices x nodes = {self.processes} processes")
        return self


class KnnConfig(_Section):
    k: PositiveInt
    temperature: Annotated[float, Field(gt=0.0)]


class EvaluateConfig(_Section):
    val_fraction: Annotated[float, Field(gt=0.0, le=0.5)]  # carved from train to choose weight decay
    weight_decays: Annotated[tuple[Annotated[float, Field(ge=0.0)], ...], Field(min_length=1)]
    max_iter: PositiveInt  # L-BFGS iteration budget per probe fit
    tolerance: Annotated[float, Field(gt=0.0)]  # converged when max |gradient| of the probe loss is below this
    batch_size: PositiveInt  # feature-extraction batch
    probe_max_mb: Annotated[float, Field(gt=0.0)]  # features one probe holds; larger splits: an even subset
    label_fractions: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...]  # shares of train labels probed too


class EmbedConfig(_Section):
    batch_size: PositiveInt  # images per onnxruntime call
    near_duplicate: Annotated[float, Field(gt=0.0, le=1.0)]  # cosine similarity from which two images count
    neighbours: Annotated[int, Field(ge=1, le=64)]  # training neighbours per query in the picture
    approximate_from: PositiveInt  # gallery rows from which an approximate index is built and searched
    approximate_recall: Annotated[float, Field(gt=0.0, le=1.0)]  # its recall@10 against exact search, at least


class ExportConfig(_Section):
    opset: Annotated[int, Field(ge=18, le=23)]
    atol: Annotated[float, Field(gt=0.0)]
    rtol: Annotated[float, Field(ge=0.0)]
    parity_images: PositiveInt
    max_batch: Annotated[int, Field(ge=2, le=1 << 20)]  # upper bound of the ONNX batch axis

    @model_validator(mode="after")
    def _parity_within_bound(self) -> ExportConfig:
        if self.parity_images > self.max_batch:
            raise ValueError(f"parity_images ({self.parity_images}) exceeds max_batch ({self.max_batch}): "
                             "the parity check runs them as one batch")
        return self


class ChecksConfig(_Section):
    """Thresholds of the asset checks an orchestrator runs on the outputs (no stage reads them)."""

    min_feature_spread: Annotated[float, Field(gt=0.0)]  # collapse: spread of the encoder's features
    min_probe_margin: float  # linear probe top-1 minus the random-init probe's, at least this
    images: PositiveInt  # test images the collapse and parity checks run through the encoder


class Params(_Section):
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    device: str  # auto | cpu | cuda | cuda:N
    paths: PathsConfig
    data: DataConfig
    model: ModelConfig
    augment: AugmentConfig
    pretrain: PretrainConfig
    knn: KnnConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    embed: EmbedConfig
    checks: ChecksConfig

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,3}", value):
            return value
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")

    @model_validator(mode="after")
    def _source_outside_prepared(self) -> Params:
        source = self.data.source_dir
        if _within(source.resolve(), self.paths.prepared.resolve()):
            raise ValueError(f"data.source_dir ({source}) lies inside paths.prepared, which ingest "
                             "replaces wholesale: keep the source elsewhere")
        return self

    @model_validator(mode="after")
    def _batch_fits_cap(self) -> Params:
        cap = self.data.max_train
        if cap is not None and self.pretrain.batch_size > cap:
            raise ValueError(f"pretrain.batch_size ({self.pretrain.batch_size}) is larger than "
                             f"data.max_train ({cap}): lower the batch or raise the cap")
        return self


def _describe(error: dict, section_keys: dict[str, list[str]]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) if loc else "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        known = section_keys.get(parent, [])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" (did you mean '{'.'.join(loc[:-1] + close)}'?)" if close else ""
        return f"{key}: unknown key{hint}. Known keys here: {', '.join(known)}"
    if kind == "missing":
        return f"{key}: missing; every param must be given in params.yaml"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and isinstance(error.get("input"), dict):  # a whole-section check
        return message if not loc or message.startswith(f"{key}.") else f"{key}: {message}"
    return f"{key}: {message} (got {_quote(error.get('input'))})"


def _quote(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to a short prefix: a huge value must not flood the message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys (DVC's YAML 1.2 parser refuses them):
    here they are an error, so the file means the same to both."""

    def compose_node(self, parent, index):
        # An alias (*name) can make a small file mean a huge nested value (the "billion
        # laughs"); params never need one, so none is taken.
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "uses a YAML alias (*name): write the value out instead",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: let PyYAML report it
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {_quote(key, 60)} appears twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            else:
                try:
                    seen[key] = key_node.start_mark.line
                except TypeError:
                    pass
        return super().construct_mapping(node, deep)


def _known_keys(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    keys = {prefix: list(model.model_fields)}
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys.update(_known_keys(sub, f"{prefix}.{name}" if prefix else name))
    return keys


def parse_params(raw: object, source: str = "params.yaml", root: Path | None = None) -> Params:
    """Validate a parsed YAML mapping; every problem is reported with its dotted key."""
    try:
        return Params.model_validate(raw, context={"root": root})
    except ValidationError as exc:
        keys = _known_keys(Params)
        lines = [_describe(err, keys) for err in exc.errors()]
        raise ByolError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None


def restrict(params: Params, keys: Iterable[str]) -> Params:
    """A copy of ``params`` that holds only ``keys``: a whole section (``"knn"``), a
    top-level value (``"seed"``) or one value of a section (``"paths.models"``). Reading
    anything else raises AttributeError, so a stage run on it can read no key that its
    declared list (and so dvc.yaml's ``params``) leaves out."""
    picked: dict[str, set[str] | None] = {}
    for key in keys:
        head, _, leaf = key.partition(".")
        if head not in Params.model_fields:
            raise KeyError(f"no params key {key!r}")
        if not leaf:
            picked[head] = None
        elif picked.get(head, set()) is not None:
            picked.setdefault(head, set()).add(leaf)
    values = {}
    for head, leaves in picked.items():
        value = getattr(params, head)
        if leaves is not None:
            unknown = leaves - set(type(value).model_fields)
            if unknown:
                raise KeyError(f"no params key '{head}.{sorted(unknown)[0]}'")
            value = type(value).model_construct(**{leaf: getattr(value, leaf) for leaf in leaves})
        values[head] = value
    return Params.model_construct(**values)


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``path``. Relative paths inside it are anchored at its directory."""
    path = Path(path)
    if not path.is_file():
        raise ByolError(f"params file {path} not found. Run from the project root or pass --params PATH.")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ByolError(f"{path}: not valid YAML ({brief(exc)}). Fix the syntax.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ByolError(f"{path}: cannot be read ({exc}). Save it as UTF-8 text.") from None
    except RecursionError:
        raise ByolError(f"{path}: nested too deeply to be params. Fix the file.") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise ByolError(f"{path}: holds a value that cannot be read ({brief(exc)}). Fix it.") from None
    if not isinstance(raw, dict):
        raise ByolError(f"{path}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}.")
    return parse_params(raw, str(path), path.resolve().parent)


@dataclass(frozen=True)
class Schedule:
    """Training-length values derived from the params and the dataset size."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def derive_schedule(cfg: PretrainConfig, n_train: int) -> Schedule:
    """Steps come from epochs and batch size (the last partial batch is dropped); the peak
    LR follows the paper's linear scaling rule, ``base_lr * batch_size / 256``."""
    if cfg.batch_size > n_train:
        raise ByolError(f"pretrain.batch_size ({cfg.batch_size}) is larger than the {n_train} "
                        "prepared training images: lower pretrain.batch_size or ingest more data.")
    steps_per_epoch = n_train // cfg.batch_size
    return Schedule(
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.epochs,
        warmup_steps=math.floor(cfg.warmup_epochs * steps_per_epoch),
        peak_lr=cfg.base_lr * cfg.batch_size / 256,
    )
