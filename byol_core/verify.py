"""``byol verify``: the prepared data, the conversion cache and the embeddings read back and
checked against the digests recorded when they were written. It writes nothing.

- The prepared data (``paths.prepared``): each image of each shard against its content hash
  in ``manifest.parquet`` (the first 8 bytes of the blake2b digest ingest took of it as it
  wrote the shard), each split's labels against the manifest's, and all of them at once
  against ``card.json``'s ``data_hash`` (of the full digests and the labels), which tells a
  damaged manifest or card from damaged data.
- The conversion cache (``paths.cache``): each entry against the digest stored with it
  (:mod:`byol_core.data.cache`).
- The embeddings (``paths.embeddings``): each file against the sha256 the embed stage
  recorded in its ``card.json``.

A piece not made yet (no embeddings before ``byol embed``) is absent, not damaged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_core.data.cache import FOLDER, VERSION, readable_rows
from byol_core.data.card import CARD_FILE, LAYOUT_FILE
from byol_core.data.prepared import Prepared, data_hash, labels_name, load_prepared
from byol_core.errors import ByolError, brief
from byol_core.schema.paths import PathsConfig
from byol_core.search.gallery import EMBED_CARD
from byol_core.data.store import DIGEST_BYTES, ShardedImages, image_digest

PREPARED_FIX = "Delete it, then restore it with `dvc checkout ingest` or run `byol ingest` again."
CACHE_FIX = ("Delete that folder (the next `byol ingest` converts its files again); until then ingest converts "
             "each damaged entry it reads again, so none reaches the prepared data.")
EMBED_FIX = "Delete it, then restore it with `dvc checkout embed` or run `byol embed` again."
CHUNK_BYTES = 8 << 20  # pixels read at a time


def verify(paths: PathsConfig) -> tuple[str, list[str]]:
    """(a one-line summary, one line per damaged file: what is wrong and how to repair it)."""
    summaries, findings = [], []
    for check, where in ((_prepared, paths.prepared), (_cache, paths.cache), (_embeddings, paths.embeddings)):
        summary, found = check(where)
        summaries.append(summary)
        findings += found
    return "verify: " + "; ".join(summaries), findings


# --- the prepared data ---------------------------------------------------------------


def _prepared(directory: Path) -> tuple[str, list[str]]:
    if not directory.exists():
        return f"no prepared data at {directory}", []
    try:
        prepared = load_prepared(directory)  # the layout, the card and the label files as files
    except ByolError as exc:
        return "", [str(exc)]
    recorded, findings = _recorded(directory / "manifest.parquet", {s: len(x) for s, x in prepared.images.items()})
    suspects, digests = [], {}
    for split, images in prepared.images.items():
        hashes, labels = recorded.get(split, (None, None))
        digests[split] = _check_shards(images, hashes, suspects, findings)
        if labels is not None and not np.array_equal(labels, prepared.labels[split]):
            wrong = int((labels != prepared.labels[split]).sum())
            suspects.append(f"{directory / labels_name(split)}: {_of(wrong, len(labels), 'label')} from "
                            "those recorded in manifest.parquet")
    if any(d is None for d in digests.values()):  # a shard could not be read: no whole to compare
        return "", findings + [f"{s}. {PREPARED_FIX}" for s in suspects]
    if _data_hash(prepared, digests) == prepared.card.data_hash:  # the data is as ingest wrote it
        if suspects:
            findings.append(f"{directory / 'manifest.parquet'}: its content hashes or labels differ from the shards "
                            f"and label files, which match {CARD_FILE}'s data hash. {PREPARED_FIX}")
    elif suspects:
        findings += [f"{s}. {PREPARED_FIX}" for s in suspects]
    elif not findings:  # shards and labels agree with the manifest: the card's hash is what changed
        findings.append(f"{directory / CARD_FILE}: its data hash differs from that of the shards and labels, "
                        f"which match manifest.parquet. {PREPARED_FIX}")
    else:
        findings.append(f"{directory}: the shards and labels do not match {CARD_FILE}'s data hash. Run `byol ingest` "
                        "again.")
    if findings:
        return "", findings
    shards = sum(len(images.files) for images in prepared.images.values())
    count = sum(len(images) for images in prepared.images.values())
    return f"{directory}: {shards} shards ({count} images) and {len(digests)} label files match their digests", []


def _recorded(path: Path, counts: dict[str, int]) -> tuple[dict, list[str]]:
    """Per split, the manifest's content hashes ((n, 8) uint8) and labels, in index order."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["index", "split", "label", "content_hash", "status"]).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        return {}, [f"{path}: cannot be read ({brief(exc, 120)}). {PREPARED_FIX}"]
    table = table[table.status == "ok"]
    recorded = {}
    for split, n in counts.items():
        rows = table[table.split == split].sort_values("index")
        try:
            if not np.array_equal(rows["index"].to_numpy(), np.arange(n)):
                raise ValueError(f"they are not the {n} images {LAYOUT_FILE} lists")
            hashes = np.frombuffer(bytes.fromhex("".join(rows.content_hash)), dtype=np.uint8).reshape(n, 8)
        except (TypeError, ValueError) as exc:  # a row missing, a hash that is no 16 hex digits
            return {}, [f"{path}: its {split} rows are damaged ({brief(exc, 120)}). {PREPARED_FIX}"]
        recorded[split] = hashes, rows.label.to_numpy(dtype=np.int64)
    return recorded, []


def _check_shards(images: ShardedImages, hashes: np.ndarray | None, suspects: list[str],
                  findings: list[str]) -> np.ndarray | None:
    """Every image's digest, (n, DIGEST_BYTES) uint8, shard by shard; a shard whose images
    differ from ``hashes`` joins ``suspects``. None if a shard cannot be read (a finding)."""
    rows = max(1, CHUNK_BYTES // int(np.prod(images.image_shape)))
    digests = []
    for path, first, stop in zip(images.files, images.starts[:-1].tolist(), images.starts[1:].tolist()):
        try:
            got = np.concatenate([_digests(images[i:min(i + rows, stop)]) for i in range(first, stop, rows)])
        except ByolError as exc:
            findings.append(str(exc))
            return None
        digests.append(got)
        if hashes is not None:
            wrong = int((got[:, :8] != hashes[first:stop]).any(axis=1).sum())
            if wrong:
                suspects.append(f"{path}: {_of(wrong, stop - first, 'image')} from the digests recorded when it "
                                "was written")
    return np.concatenate(digests) if digests else np.zeros((0, DIGEST_BYTES), dtype=np.uint8)


def _of(n: int, total: int, noun: str) -> str:
    """"1 of its 9 images differs", "2 of its 9 images differ"."""
    return f"{n} of its {total} {noun if total == 1 else noun + 's'} {'differs' if n == 1 else 'differ'}"


def _digests(images: np.ndarray) -> np.ndarray:
    return np.frombuffer(b"".join(image_digest(image) for image in images), dtype=np.uint8).reshape(-1, DIGEST_BYTES)


def _data_hash(prepared: Prepared, digests: dict[str, np.ndarray]) -> str:
    return data_hash({split: (images.shape, prepared.labels[split], digests[split].tobytes())
                      for split, images in prepared.images.items()})


# --- the conversion cache -----------------------------------------------------------


@dataclass
class Checked:
    """One conversion folder read back against its digests (see :func:`check_folder`)."""

    entries: int = 0  # entries with a digest, each read and checked
    damaged: int = 0  # of them: pixels that differ from their digest, or that are gone from their pack
    unverified: int = 0  # entries kept before digests were: the next ingest converts them again
    problem: str = ""  # why the folder could not be checked at all


def _cache(root: Path) -> tuple[str, list[str]]:
    folders = sorted(p for p in root.iterdir() if (m := FOLDER.fullmatch(p.name)) and int(m[3]) == VERSION
                     and (p / "index.sqlite").is_file()) if root.is_dir() else []
    if not folders:
        return f"no conversion cache at {root}", []
    findings, total = [], Checked()
    for folder in folders:
        found = check_folder(folder)
        if found.problem:
            findings.append(f"{folder}: {found.problem}. {CACHE_FIX}")
        elif found.damaged:
            n = found.damaged
            findings.append(f"{folder}: {n} of its {found.entries} entries {'is' if n == 1 else 'are'} damaged (the "
                            f"pixels differ from the digest stored when they were written, or are gone from their "
                            f"pack). {CACHE_FIX}")
        total.entries += found.entries
        total.unverified += found.unverified
    old = f", and {total.unverified} kept without one (ingest converts them again)" if total.unverified else ""
    return f"{root}: {total.entries} entries match their digests{old}", findings


def check_folder(folder: Path, chunk: int = 4096) -> Checked:
    """Read every entry of a conversion folder (``images-{C}x{S}-v{VERSION}``) back from its
    pack and compare it with the digest stored when it was written."""
    match = FOLDER.fullmatch(folder.name)
    shape = (int(match[1]), int(match[2]), int(match[2]))
    found = Checked()
    try:
        db = sqlite3.connect(f"{(folder / 'index.sqlite').resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return Checked(problem=f"its index cannot be opened ({exc})")
    try:
        digest = "digest" if "digest" in {row[1] for row in db.execute("PRAGMA table_info(files)")} else "NULL"
        packs = list(db.execute("SELECT id, name, rows FROM packs WHERE rows > 0 ORDER BY id"))
        readable = readable_rows(folder, int(np.prod(shape)), packs)
        names = {pack_id: name for pack_id, name, _ in packs}
        cursor = db.execute(f"SELECT pack, row, {digest} FROM files WHERE kind IS NULL AND pack IS NOT NULL "
                            "ORDER BY pack, row")
        for pack_id, entries in itertools.groupby(cursor, key=lambda entry: entry[0]):
            count = readable.get(pack_id, 0)
            images = ShardedImages([folder / names[pack_id]] if count else [], [count] if count else [], shape,
                                   raw=True)
            try:
                while part := list(itertools.islice(entries, chunk)):
                    _check_entries(images, part, found)
            finally:
                images.close()
    except sqlite3.Error as exc:
        found.problem = f"its index cannot be read ({exc})"
    except ByolError as exc:  # a pack that changed while it was read
        found.problem = str(exc).rstrip(".")
    finally:
        db.close()
    return found


def _check_entries(images: ShardedImages, entries: list[tuple[int, int, bytes | None]], found: Checked) -> None:
    """One pack's entries (pack, row, digest) against the rows its file still holds."""
    known = [(row, digest) for _, row, digest in entries if digest is not None and len(digest) == DIGEST_BYTES]
    inside = [(row, digest) for row, digest in known if row < len(images)]
    found.unverified += len(entries) - len(known)
    found.entries += len(known)
    found.damaged += len(known) - len(inside)
    if inside:
        pixels = images.take(np.array([row for row, _ in inside], dtype=np.int64))
        found.damaged += sum(image_digest(image) != digest for image, (_, digest) in zip(pixels, inside))


# --- the embeddings -----------------------------------------------------------------


def _embeddings(folder: Path) -> tuple[str, list[str]]:
    card = folder / EMBED_CARD
    if not folder.exists():
        return f"no embeddings at {folder}", []
    try:
        recorded = json.loads(card.read_text())
    except (OSError, ValueError) as exc:
        return "", [f"{card}: cannot be read ({brief(exc, 120)}). {EMBED_FIX}"]
    recorded = recorded.get("sha256") if isinstance(recorded, dict) else None
    if recorded is None:
        return f"{folder}: not checked, its {EMBED_CARD} records no digests (run `byol embed` again to record them)", []
    if not isinstance(recorded, dict) or not all(isinstance(d, str) and Path(n).name == n for n, d in recorded.items()):
        return "", [f"{card}: its sha256 record is damaged. {EMBED_FIX}"]
    findings = []
    for name, digest in sorted(recorded.items()):
        path = folder / name
        try:
            actual = _sha256(path)
        except OSError as exc:
            findings.append(f"{path}: cannot be read ({exc.strerror}). {EMBED_FIX}")
            continue
        if actual != digest:
            findings.append(f"{path}: its sha256 differs from the one recorded when it was written. {EMBED_FIX}")
    return f"{folder}: {' and '.join(sorted(recorded))} match their digests", findings


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()
