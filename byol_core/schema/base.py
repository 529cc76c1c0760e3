"""What every params section shares: the frozen model, paths anchored at the params file,
reading params.yaml, and :func:`restrict`, which hands a stage only its declared keys.

Every stage imports this module, so only what changes the values a stage is handed lives
here. How a bad file is reported as a whole (and the checks that span sections) is in
:mod:`byol_core.config`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationInfo
from pydantic_core import PydanticCustomError

from byol_core.errors import ByolError, brief

# Strict numbers and booleans. YAML reads a bare `true` as a bool, and pydantic's lax mode
# takes a bool as 1 for an int (and 1.0 for a float), so `epochs: true` would train one
# epoch. Strict types refuse it (and a quoted "3", or 3.0 for a count); an int for a float
# (`base_lr: 1`) is still taken. Every number and flag in a section uses these.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Probability = Annotated[Float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[Int, Field(ge=1)]


def _an_int(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def int_choice(*values: int) -> object:
    """One of ``values``. A Literal of ints takes True as 1 and 3.0 as 3, even in strict
    mode, so only an int is passed to it."""
    return Annotated[Literal[values], BeforeValidator(_an_int)]


class Section(BaseModel):
    # No NaN or infinity anywhere: every number in params.yaml must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Params(Section):
    """params.yaml's top-level keys as attributes: all of them (:class:`byol_core.config.Params`,
    a subclass), or the share :func:`restrict` hands a stage. Stages take this type, so
    their code does not import the schema of sections they never read."""


def within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it."""
    return path == folder or folder in path.parents


def anchored(path: Path, info: ValidationInfo) -> Path:
    """Relative paths are taken from the params file's folder (passed as context "root"),
    and must stay inside it: a ``..`` or a symlink that leads out of the project is refused,
    so a shared params file cannot make a stage read or replace files elsewhere. An
    absolute path is the user's explicit choice and is taken as written."""
    root = (info.context or {}).get("root")
    if path.is_absolute() or root is None:
        return path
    anchored = Path(root) / path
    real_root, real = Path(root).resolve(), anchored.resolve()
    if not within(real, real_root):
        how = "through '..'" if ".." in path.parts else "through a symlink"
        raise ValueError(f"'{path}' leads outside the project folder {real_root} ({how}, to {real}). "
                         "Use a path inside the project, or write the absolute path if you mean to go outside it")
    return anchored


def ordered_pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value)}")
    return value


def quote(value: object, limit: int = 80) -> str:
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
                    None, None, f"key {quote(key, 60)} appears twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            else:
                try:
                    seen[key] = key_node.start_mark.line
                except TypeError:
                    pass
        return super().construct_mapping(node, deep)


def read_params_file(path: Path) -> tuple[dict, Path]:
    """``path`` parsed (not yet validated), and the folder its relative paths are taken from."""
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
    return raw, path.resolve().parent


def restrict(params: Params, keys: Iterable[str]) -> Params:
    """A copy of ``params`` that holds only ``keys``: a whole section (``"knn"``), a
    top-level value (``"seed"``) or one value of a section (``"paths.models"``). Reading
    anything else raises AttributeError, so a stage run on it can read no key that its
    declared list (and so dvc.yaml's ``params``) leaves out."""
    fields = type(params).model_fields
    picked: dict[str, set[str] | None] = {}
    for key in keys:
        head, _, leaf = key.partition(".")
        if head not in fields:
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
    return type(params).model_construct(**values)
