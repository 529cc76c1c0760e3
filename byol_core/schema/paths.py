"""``paths``: where the stages read and write, and the fixed file names inside those folders,
so each path is written in one place. Every stage reads some of it."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationInfo, field_validator, model_validator

from byol_core.schema.base import Section, anchored, within


class PathsConfig(Section):
    """Where the stages write, and where a warm start reads (``start``, a file). Relative
    paths are taken from the params file's directory."""

    listing: Path  # the source listing (byol_core.data.scan): what DVC tracks of data.source_dir
    prepared: Path
    models: Path
    start: Path  # the training state a warm start begins from (`byol promote` writes it; DVC tracks it)
    metrics: Path
    resume: Path
    cache: Path
    embeddings: Path

    @field_validator("*", mode="after")
    @classmethod
    def _anchor(cls, value: Path, info: ValidationInfo) -> Path:
        return anchored(value, info)

    @model_validator(mode="after")
    def _prepared_is_its_own_folder(self, info: ValidationInfo) -> PathsConfig:
        # ingest replaces paths.prepared wholesale, so it must not hold anything else.
        prepared = self.prepared.resolve()
        root = (info.context or {}).get("root")
        if root is not None and within(Path(root).resolve(), prepared):
            raise ValueError(f"paths.prepared ({self.prepared}) is the project folder or above it; "
                             "ingest replaces that folder wholesale: use a folder of its own, e.g. data/prepared")
        for name in ("listing", "models", "start", "metrics", "resume", "cache", "embeddings"):
            if within(getattr(self, name).resolve(), prepared):
                raise ValueError(f"paths.{name} ({getattr(self, name)}) lies inside paths.prepared "
                                 f"({self.prepared}), which ingest replaces wholesale: move one of them")
        return self

    @model_validator(mode="after")
    def _start_is_no_output(self) -> PathsConfig:
        # DVC deletes pretrain's outputs before the stage runs: the start would be gone.
        if self.start.resolve() in (self.encoder.resolve(), self.checkpoint.resolve()):
            raise ValueError(f"paths.start ({self.start}) is one of pretrain's outputs, which DVC deletes before "
                             "pretrain runs: give the promoted state a place of its own, e.g. models/start/checkpoint.pt")
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
