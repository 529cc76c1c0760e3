"""The stages' figures files (``metrics/*.json``) as types: one frozen dataclass per stage.

The stage builds its dataclass and writes it with :func:`write` (sorted keys, two-space
indent: the bytes DVC has always hashed); whoever shows or checks the figures (the Dagster
asset pages and checks, benchmarks) reads it back with :func:`read`, which checks every key
and type, so a renamed or missing key is an error that names the file and the key, in the
process that reads it, not a KeyError or a silent None somewhere else.

A field's metadata says how an asset page shows it: ``label`` (its name there) and
``format`` (a format spec for floats, e.g. ``.4f``). Fields without a label are in the file
but not on the page (nested tables are built from their typed values by the page).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from byol_core.errors import ByolError
from byol_core.io.storage import json_writer

T = TypeVar("T")


def shown(label: str, format: str = "") -> Any:
    """A field an asset page shows as ``label`` (floats formatted with ``format``)."""
    return dataclasses.field(metadata={"label": label, "format": format})


@dataclasses.dataclass(frozen=True)
class PretrainMetrics:
    final_loss: float = shown("final loss", ".4f")
    epochs: int = shown("epochs")
    steps: int = shown("steps")
    total_steps: int = shown("total steps")
    peak_lr: float = shown("peak learning rate", ".4g")
    images_per_sec: float = shown("images per second", ".1f")  # over every epoch's steps, across resumes
    train_seconds: float = shown("training seconds", ".1f")
    collapse_std: float = shown("collapse std", ".4f")
    knn_top1: float = shown("monitor kNN top-1", ".4f")
    encoder_parameters: int = shown("encoder parameters")
    device: str = shown("device")
    init: str = shown("init")  # scratch, or previous: began from the promoted state with init_sha256
    init_sha256: str | None = dataclasses.field(default=None)


@dataclasses.dataclass(frozen=True)
class ProbeSummary:
    top1: float
    top5: float
    weight_decay: float
    val_top1: float
    iterations: int
    converged: bool


@dataclasses.dataclass(frozen=True)
class Retrieval:
    recall_at_1: float
    recall_at_5: float
    map_at_r: float
    queries: int
    gallery: int


@dataclasses.dataclass(frozen=True)
class Spread:
    effective_rank: float
    effective_rank_fraction: float
    mean_cosine: float


@dataclasses.dataclass(frozen=True)
class EvalMetrics:
    """Per feature set (``byol``, ``random_init``, ``pixels``): probe, retrieval, spread and
    label efficiency (share of train labels, as a string -> linear top-1)."""

    linear_top1: float = shown("linear top-1", ".4f")
    linear_top5: float = shown("linear top-5", ".4f")
    knn_top1: float = shown("kNN top-1", ".4f")
    effective_rank: float = shown("effective rank", ".2f")
    mean_cosine: float = shown("mean cosine", ".4f")
    random_init_linear_top1: float = shown("random-init linear top-1", ".4f")
    pixels_linear_top1: float = shown("pixels linear top-1", ".4f")
    random_init_knn_top1: float = shown("random-init kNN top-1", ".4f")
    pixels_knn_top1: float = shown("pixels kNN top-1", ".4f")
    n_train: int = shown("train images")
    n_test: int = shown("test images")
    subset: bool = shown("probed on a subset")
    probe: dict[str, ProbeSummary] = dataclasses.field(default_factory=dict)
    retrieval: dict[str, Retrieval] = dataclasses.field(default_factory=dict)
    label_efficiency: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    spread: dict[str, Spread] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExportMetrics:
    """Parity of onnxruntime against PyTorch, and latency: ``latency_ms_batch1`` and
    ``latency_ms_batch{n_images}`` (in ``latency``, by batch size, as the file spells them)."""

    max_abs_diff: float = shown("parity max abs diff", ".3g")
    parity_ok: bool = shown("parity ok")
    provider: str = shown("provider")
    opset: int = shown("opset")
    n_images: int = shown("parity images")
    latency: dict[str, float] = dataclasses.field(default_factory=dict)

    LATENCY = "latency_ms_batch"  # the files' key prefix of each latency

    def to_json(self) -> dict:
        found = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "latency"}
        return {**found, **{f"{self.LATENCY}{batch}": ms for batch, ms in self.latency.items()}}

    @classmethod
    def from_json(cls, raw: dict) -> dict:
        latency = {key[len(cls.LATENCY):]: value for key, value in raw.items() if key.startswith(cls.LATENCY)}
        return {**{k: v for k, v in raw.items() if not k.startswith(cls.LATENCY)}, "latency": latency}


@dataclasses.dataclass(frozen=True)
class NearDuplicates:
    threshold: float
    test_with_train_near_duplicate: int
    train_pairs: int
    test_nearest_train_similarity: dict[str, float]


@dataclasses.dataclass(frozen=True)
class EmbedMetrics:
    rows: int = shown("images")
    dim: int = shown("dimensions")
    images_per_sec: float = shown("images per second", ".1f")
    provider: str = shown("provider")
    embed_seconds: float = shown("embedding seconds", ".1f")
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    data_hash: str = ""
    encoder_data_hash: str = ""
    near_duplicates: NearDuplicates | None = None
    approximate: dict[str, Any] | None = None  # the approximate index's figures, when built


def to_json(metrics: Any) -> dict:
    """The file's contents: the dataclass as plain JSON values."""
    custom = getattr(metrics, "to_json", None)
    return custom() if custom is not None else dataclasses.asdict(metrics)


def write(path: Path, metrics: Any) -> None:
    """Write ``metrics`` to ``path`` through a temp file (for a stage's commit: :func:`writer`)."""
    writer(metrics)(path)


def writer(metrics: Any):
    """A writer of ``metrics`` for :class:`byol_core.io.storage.StageCommit`."""
    return json_writer(to_json(metrics))


class _Wrong(Exception):
    def __init__(self, where: str, what: str):
        super().__init__(where, what)
        self.where, self.what = where, what


def _check(value: Any, kind: Any, where: str) -> Any:
    """``value`` as ``kind`` (a dataclass, a dict, a union with None, or a plain type)."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        return _check(value, next(o for o in options if o is not type(None)), where)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise _Wrong(where, f"expected an object, found {type(value).__name__}")
        inner = typing.get_args(kind)[1]
        return {k: _check(v, inner, f"{where}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return value  # JSON writes 1.0 as 1.0, but an exact count may come back as an int
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise _Wrong(where, f"expected {kind.__name__}, found {json.dumps(value)[:40]}")
    return value


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise _Wrong(where or "the file", f"expected an object, found {type(raw).__name__}")
    raw = cls.from_json(raw) if hasattr(cls, "from_json") else raw
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Wrong(key, "missing")
            continue
        values[f.name] = _check(raw[f.name], hints[f.name], key)
    return cls(**values)


def read(cls: type[T], path: Path, stage: str) -> T:
    """The figures ``stage`` wrote to ``path``, checked against ``cls``."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ByolError(f"{path} is missing: run `dvc repro {stage}` (or `dvc checkout`) first.") from None
    except (OSError, ValueError) as exc:
        raise ByolError(f"{path}: cannot be read as {stage}'s figures ({exc}). Run `dvc repro {stage}` to write "
                        "it again.") from None
    try:
        return _build(cls, raw, "")
    except _Wrong as wrong:
        raise ByolError(f"{path}: '{wrong.where}': {wrong.what}. It was written by another version of {stage}: "
                        f"run `dvc repro --force {stage}` to write it again.") from None


def labelled(metrics: Any) -> list[tuple[str, str, Any]]:
    """(label, float format, value) of each field an asset page shows, in field order."""
    return [(f.metadata["label"], f.metadata["format"], getattr(metrics, f.name))
            for f in dataclasses.fields(metrics) if "label" in f.metadata]
