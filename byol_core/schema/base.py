"""What every params section shares: the frozen model, paths anchored at the params file,
reading params.yaml, and :class:`View`, the class in which a stage declares the keys it reads.

Every stage imports this module, so only what changes the values a stage is handed lives
here. How a bad file is reported as a whole (and the checks that span sections) is in
:mod:`byol_core.config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationInfo
from pydantic_core import PydanticCustomError

from byol_core.errors import ByolError, brief
from byol_core.schema import SECTIONS

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


class _SameWeights:
    def __repr__(self) -> str:
        return "SAME_WEIGHTS"


# Marks a field that does not change the trained weights (logging, monitoring, how the work
# is spread over processes, where the data is held): ``Annotated[PositiveInt, SAME_WEIGHTS]``.
# A pretrain resume state is keyed by every other field (byol_core.train.resume.run_key), so changing
# a marked one goes on with an unfinished run instead of starting over.
SAME_WEIGHTS = _SameWeights()


def same_weights(section: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``section`` marked :data:`SAME_WEIGHTS`."""
    return tuple(name for name, field in section.model_fields.items() if SAME_WEIGHTS in field.metadata)


class Section(BaseModel):
    # No NaN or infinity anywhere: every number in params.yaml must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Params(Section):
    """params.yaml's top-level keys as attributes, all of them: :class:`byol_core.config.Params`,
    a subclass. A stage is handed its :class:`View` instead."""


class Only:
    """In a :class:`View`, the keys of a section that the stage reads when it reads only some:
    ``paths: Annotated[PathsConfig, Only("prepared", "models")]``."""

    def __init__(self, *keys: str) -> None:
        self.keys = keys


class View(Section):
    """The params keys one stage reads, as a class: a field per params.yaml top-level key,
    typed by that key's schema (so go-to-definition leads to it), with :class:`Only` where
    the stage reads some keys of a section. Three things follow from it:

    - :meth:`of`: the params the stage is handed. Reading a key the view leaves out raises
      AttributeError, so a stage cannot read a key that DVC does not track for it;
    - :meth:`keys`: the stage's ``params:`` list in dvc.yaml (scripts/code_deps.py writes it);
    - its code deps: the view's module imports the schema of every section it names, and so
      does the stage that imports the view.

    Fields follow params.yaml's order (``SECTIONS``), as the whole file's do: the view's
    ``model_dump`` is what a checkpoint records as its params."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        names = list(cls.model_fields)
        for name in names:
            if name not in SECTIONS:
                raise KeyError(f"no params key {name!r}")
            section = cls.model_fields[name].annotation
            unknown = [leaf for leaf in cls._only(name) or () if leaf not in section.model_fields]
            if unknown:
                raise KeyError(f"no params key '{name}.{unknown[0]}'")
        if names != sorted(names, key=list(SECTIONS).index):
            raise TypeError(f"{cls.__name__}: declare the keys in params.yaml's order ({', '.join(SECTIONS)})")

    @classmethod
    def _only(cls, name: str) -> tuple[str, ...] | None:
        """The keys of section ``name`` the view reads, or None for the whole of it."""
        marks = [mark for mark in cls.model_fields[name].metadata if isinstance(mark, Only)]
        return marks[0].keys if marks else None

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The dotted keys the view reads: a whole section (``"knn"``), a top-level value
        (``"seed"``) or one value of a section (``"paths.models"``)."""
        keys: list[str] = []
        for name in cls.model_fields:
            only = cls._only(name)
            keys += [name] if only is None else [f"{name}.{leaf}" for leaf in only]
        return tuple(keys)

    @classmethod
    def of(cls, params: BaseModel) -> Self:
        """The share of ``params`` (validated: the whole file, or a wider view) this view reads.
        A section read in part keeps its derived values (``paths.encoder`` from ``paths.models``)."""
        values = {}
        for name in cls.model_fields:
            value = getattr(params, name)
            only = cls._only(name)
            if only is not None:
                value = type(value).model_construct(**{leaf: getattr(value, leaf) for leaf in only})
            values[name] = value
        return cls.model_construct(**values)


def within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it."""
    return path == folder or folder in path.parents


def anchored(path: Path, info: ValidationInfo, read_only: bool = False) -> Path:
    """Relative paths are taken from the params file's folder (passed as context "root"),
    and must stay inside it: a ``..`` or a symlink that leads out of the project is refused,
    so a shared params file cannot make a stage read or replace files elsewhere. A folder
    that is only read (``read_only``: the source files) may be a symlink the user made to
    another disk, as its class folders may; a ``..`` out of the project is refused all the
    same. An absolute path is the user's explicit choice and is taken as written."""
    root = (info.context or {}).get("root")
    if path.is_absolute() or root is None:
        return path
    anchored = Path(root) / path
    real_root, real = Path(root).resolve(), anchored.resolve()
    if read_only:  # links followed wherever they lead; only the path as written must stay inside
        inside = within(Path(os.path.normpath(anchored.absolute())), Path(os.path.normpath(Path(root).absolute())))
    else:
        inside = within(real, real_root)
    if not inside:
        how = "through '..'" if read_only or ".." in path.parts else "through a symlink"
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
