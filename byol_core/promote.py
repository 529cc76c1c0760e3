"""``byol promote``: make the last pretrain's full training state the start of the next
warm-started run (``pretrain.init: previous``, byol_core.train.warmstart).

It copies pretrain's checkpoint (``paths.models``/checkpoint.pt) to ``paths.start`` and
writes the copy's sha256 into params.yaml's ``init_sha256:`` line, that line alone (every
comment stays), both or neither (storage.commit_files). ``dvc add`` on the start file and a
commit of its .dvc file with params.yaml then let every clone ``dvc pull`` it; ``make
promote`` runs the ``dvc add``. Not a DVC stage: it edits params.yaml, which stages read.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from byol_core.train.resume import load_state
from byol_core.config import Params, parse_params
from byol_core.errors import ByolError
from byol_core.schema.base import read_params_file
from byol_core.io.storage import commit_files
from byol_core.train.warmstart import file_sha256

_KEY = re.compile(r"^[ \t]*init_sha256[ \t]*:", re.M)
# The one line promote rewrites: indentation, key, a value (null or a digest), an optional comment.
_LINE = re.compile(r"^(?P<head>[ \t]+init_sha256:[ \t]+)(?P<value>null|~|\"[0-9a-f]{64}\"|'[0-9a-f]{64}'|[0-9a-f]{64})"
                   r"(?P<gap>[ \t]*)(?P<comment>#[^\n]*)?(?P<end>\r?)$", re.M)


def _digest_line(text: str, source: str) -> re.Match:
    found, match = len(_KEY.findall(text)), _LINE.search(text)
    if found != 1 or match is None:
        what = f"{found} lines with that key" if found != 1 else "one without null or a digest on the same line"
        raise ByolError(f"{source}: `byol promote` rewrites the one line `  init_sha256: null` (or a digest) of the "
                        f"pretrain section, but found {what}. Write it as one such line and run `byol promote` again.")
    return match


def with_digest(text: str, digest: str, source: str = "params.yaml") -> str:
    """``text`` (a params file) with its ``init_sha256:`` line set to ``digest``, keeping the
    line's indentation and comment (at its column where the value leaves room); every
    other byte stays as it was."""
    line = _digest_line(text, source)
    value = f'"{digest}"'  # quoted: a digest of digits alone would otherwise read as a number
    comment = line["comment"] or ""
    if comment:
        column = len(line["head"]) + len(line["value"]) + len(line["gap"])
        comment = " " * max(2, column - len(line["head"]) - len(value)) + comment
    return f"{text[:line.start()]}{line['head']}{value}{comment}{line['end']}{text[line.end():]}"


def _load_params(path: Path) -> Params:
    """params.yaml validated as promote will leave it: with a digest. So a file that already
    says init: previous with init_sha256 null (refused everywhere else) can be promoted into."""
    raw, root = read_params_file(path)
    pretrain = raw.get("pretrain")
    if isinstance(pretrain, dict) and "init_sha256" in pretrain and pretrain["init_sha256"] is None:
        pretrain["init_sha256"] = "0" * 64  # any digest validates alike; the real one is written below
    return parse_params(raw, str(path), root)


def _shown(path: Path) -> str:
    """``path`` as a command run from here would name it: relative below the current folder."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def promote(params_path: Path) -> tuple[str, dict]:
    """Copy pretrain's checkpoint to ``paths.start`` and write its sha256 into the params file
    at ``params_path``. Returns the summary (with what to run next) and the digest."""
    params = _load_params(params_path)
    source, start = params.paths.checkpoint, params.paths.start
    text = params_path.read_bytes().decode("utf-8")  # bytes: line endings stay as they are
    _digest_line(text, str(params_path))  # checked before anything is written
    load_state(source, "Run `byol pretrain` (or `dvc repro`, or `dvc pull`) to make it, then promote it.")
    digest = {}

    def copy(tmp: Path) -> None:
        shutil.copyfile(source, tmp)
        digest["sha256"] = file_sha256(tmp)  # of the very bytes that become paths.start

    commit_files([(start, copy),
                  (params_path, lambda tmp: tmp.write_bytes(with_digest(text, digest["sha256"]).encode("utf-8")))],
                 start.parent / ".promote.commit")
    shown, params_file = _shown(start), _shown(params_path)
    then = "run" if params.pretrain.warm else "set pretrain.init: previous, then run"
    line = (f"promote: {_shown(source)} -> {shown}, sha256 {digest['sha256']} "
            f"(now pretrain.init_sha256 in {params_file}). Next:\n"
            f"  dvc add {shown}\n"
            f"  git add {shown}.dvc {_shown(start.parent / '.gitignore')} {params_file}\n"
            f"  {then} `dvc repro`")
    return line, {"sha256": digest["sha256"], "start": str(start)}
