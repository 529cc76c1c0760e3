"""Typed, validated params: the whole of ``params.yaml`` parsed once into frozen config.

Every value that changes an output lives in ``params.yaml``; nothing has a default, so a
missing key is reported instead of silently filled in. Each section's schema lives in
:mod:`byol_core.schema` (one module per group of sections, so a stage's code holds only
the schema of what it reads); this module puts them together, adds the checks that span
sections, and reports every problem at once with its dotted key.

The ``byol`` command validates the whole file before any stage runs, so a bad value in any
section, even one the stage never reads, stops it with a clear message. No stage imports
this module: what it adds can refuse a file but never changes a value a stage is handed,
so editing it reruns nothing under DVC. Orchestrators (pipelines/) read params through
:func:`load_params` too.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import BaseModel, ValidationError, create_model, model_validator

from byol_core.errors import ByolError
from byol_core.schema import SECTIONS, section
from byol_core.schema.base import Params as _Params, quote, read_params_file, within


class _AcrossSections(_Params):
    """The checks that need two sections at once. They can only refuse a file, so they sit
    with the whole file rather than in a section's schema."""

    @model_validator(mode="after")
    def _source_outside_prepared(self) -> _AcrossSections:
        source = self.data.source_dir
        if within(source.resolve(), self.paths.prepared.resolve()):
            raise ValueError(f"data.source_dir ({source}) lies inside paths.prepared, which ingest "
                             "replaces wholesale: keep the source elsewhere")
        return self

    @model_validator(mode="after")
    def _scan_writes_outside_source(self) -> _AcrossSections:
        # The scan lists every file in data.source_dir: its own listing or side cache there
        # would change with each scan, and the listing would never be the same twice.
        source = self.data.source_dir.resolve()
        for name in ("listing", "cache"):
            path = getattr(self.paths, name)
            if within(path.resolve(), source):
                raise ValueError(f"paths.{name} ({path}) lies inside data.source_dir ({self.data.source_dir}), "
                                 "which the scan lists: every scan would change what it lists. Keep it elsewhere")
        return self

    @model_validator(mode="after")
    def _batch_fits_cap(self) -> _AcrossSections:
        cap = self.data.max_train
        if cap is not None and self.pretrain.batch_size > cap:
            raise ValueError(f"pretrain.batch_size ({self.pretrain.batch_size}) is larger than "
                             f"data.max_train ({cap}): lower the batch or raise the cap")
        return self


Params = create_model("Params", __base__=_AcrossSections, __module__=__name__,
                      __doc__="The whole of params.yaml: one field per key of byol_core.schema.SECTIONS.",
                      **{key: (section(key), ...) for key in SECTIONS})


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
    return f"{key}: {message} (got {quote(error.get('input'))})"


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


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``path``. Relative paths inside it are anchored at its directory."""
    path = Path(path)
    raw, root = read_params_file(path)
    return parse_params(raw, str(path), root)
