"""Damaged variants of every file the stages read, and the worker that reads them.

:func:`build_cases` makes real files (IDX, CIFAR pickle, STL binary, PNG and JPEG, a
prepared store, an encoder file, a training state, an ONNX model) and, from each,
truncated, bit-flipped, oversized-header and wrong-type variants. :func:`worker` runs in a
process of its own with a cap on its address space (RLIMIT_AS) and reads each variant with
the project's reader; every outcome must be a valid result or a ByolError.
"""

from __future__ import annotations

import gzip
import json
import pickle
import resource
import shutil
import struct
import traceback
from pathlib import Path

import numpy as np

MEMORY_HEADROOM = 2 << 30  # bytes a reader may allocate beyond what the worker holds at start


def truncations(raw: bytes) -> dict[str, bytes]:
    return {"empty": b"", "one byte": raw[:1], "cut 10%": raw[:len(raw) // 10], "cut half": raw[:len(raw) // 2],
            "last byte cut": raw[:-1]}


def bit_flips(raw: bytes, seed: int, count: int = 3) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(count):
        data = bytearray(raw)
        for pos in rng.integers(0, len(data), size=1 + 4 * k):
            data[pos] ^= 1 << int(rng.integers(0, 8))
        out[f"{1 + 4 * k} bits flipped"] = bytes(data)
    return out


def _variants(kind: str, folder: Path, name: str, raw: bytes, seed: int, extra: dict[str, bytes]) -> list[dict]:
    cases = []
    for label, data in {**truncations(raw), **bit_flips(raw, seed), **extra,
                        "wrong type (text)": b"hello, this is not the file you want\n",
                        "random bytes": np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
                        }.items():
        path = folder / f"{kind}-{len(cases):02d}" / name
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        cases.append({"reader": kind, "path": str(path), "variant": label})
    return cases


def _idx_header(dtype: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, dtype, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _copy_variant(kind: str, folder: Path, source: Path, label: str, damage) -> dict:
    """A copy of the folder ``source``, then ``damage(copy)``."""
    target = folder / f"{kind}-{label.replace(' ', '_').replace('/', '_')}" / source.name
    shutil.copytree(source, target)
    damage(target)
    return {"reader": kind, "path": str(target), "variant": label}


def build_cases(folder: Path, files: dict[str, Path]) -> list[dict]:
    """Every variant. ``files``: "idx" (a gzipped IDX image file), "cifar" (a batch file),
    "stl" (an STL-10 root), "png", "jpeg", "prepared" (a prepared folder), "encoder",
    "state", "onnx"."""
    cases = []
    idx = gzip.decompress(files["idx"].read_bytes())
    n = struct.unpack(">I", idx[4:8])[0]
    pixels = idx[16:]
    gz = files["idx"].read_bytes()
    cases += _variants("idx", folder, "train-images-idx3-ubyte.gz", gz, 1, {
        "huge count": gzip.compress(_idx_header(8, (2**32 - 1, 28, 28)) + pixels),
        "overflowing dims": gzip.compress(_idx_header(8, (2**31, 2**31, 2**31)) + pixels),
        "height 0": gzip.compress(_idx_header(8, (n, 0, 28)) + pixels),
        "no dims": gzip.compress(_idx_header(8, ())),
        "float type": gzip.compress(_idx_header(0x0D, (n, 28, 28)) + pixels),
        "one dim": gzip.compress(_idx_header(8, (len(pixels),)) + pixels),
        "extra bytes": gzip.compress(idx + b"\0" * 100),
        "not gzipped": idx,
        "gzip of nothing": gzip.compress(b""),
    })
    batch = files["cifar"].read_bytes()
    entry = pickle.loads(batch, encoding="bytes")
    data_key = next(k for k in entry if k in (b"data", "data"))
    label_key = next(k for k in entry if k in (b"labels", "labels"))

    def with_entry(**changes) -> bytes:
        changed = dict(entry)
        for key, value in changes.items():
            changed[data_key if key == "data" else label_key] = value
        return pickle.dumps(changed, protocol=2)

    cases += _variants("cifar", folder, "data_batch_1", batch, 2, {
        "data as list": with_entry(data=[1, 2, 3]),
        "data float": with_entry(data=np.zeros((3, 3072), np.float32)),
        "data wrong width": with_entry(data=np.zeros((3, 100), np.uint8)),
        "labels as text": with_entry(labels=["a", "b", "c"]),
        "labels out of range": with_entry(labels=[0, 1, 10**6]),
        "labels short": with_entry(labels=[0]),
        "a list, not a dict": pickle.dumps([1, 2, 3]),
        "JSON": json.dumps({"data": [1]}).encode(),
    })
    stl_root = files["stl"]

    def stl_file(name: str, data: bytes | None = None, size: int | None = None):
        def damage(root: Path) -> None:
            path = root / "stl10_binary" / name
            if data is not None:
                path.write_bytes(data)
            if size is not None:
                with open(path, "r+b") as handle:
                    handle.truncate(size)
        return damage

    image_bytes = 3 * 96 * 96
    for label, damage in {
        "train images cut": stl_file("train_X.bin", size=image_bytes * 2 + 7),
        "train images empty": stl_file("train_X.bin", data=b""),
        "absurd sparse size": stl_file("unlabeled_X.bin", size=image_bytes * 40_000_000),
        "labels out of range": stl_file("train_y.bin", data=bytes([1, 200, 3])),
        "labels too few": stl_file("train_y.bin", data=bytes([1])),
        "class names binary": stl_file("class_names.txt", data=b"\xff\xfe\x00garbage"),
        "class names empty": stl_file("class_names.txt", data=b"\n\n"),
    }.items():
        cases.append(_copy_variant("stl", folder, stl_root, label, damage))
    for fmt in ("png", "jpeg"):
        raw = files[fmt].read_bytes()
        extra = {}
        if fmt == "png":  # an IHDR claiming a 100000 x 100000 image: a decompression bomb
            ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
            import zlib
            chunk = b"IHDR" + ihdr
            extra["giant dimensions"] = raw[:8] + struct.pack(">I", 13) + chunk + \
                struct.pack(">I", zlib.crc32(chunk)) + raw[33:]
        cases += _variants(fmt, folder, f"image.{'png' if fmt == 'png' else 'jpg'}", raw, 3, extra)
    prepared = files["prepared"]

    def rewrite(name: str, text: str | bytes):
        def damage(root: Path) -> None:
            (root / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        return damage

    card = json.loads((prepared / "card.json").read_text())
    layout = json.loads((prepared / "store.json").read_text())
    shard = (prepared / "train-00000.npy").read_bytes()
    labels = np.load(prepared / "train-labels.npy")

    def npy(array) -> bytes:
        import io
        buf = io.BytesIO()
        np.save(buf, array)
        return buf.getvalue()

    def bad_layout(**changes) -> str:
        changed = json.loads(json.dumps(layout))
        changed.update(changes)
        return json.dumps(changed)

    for label, damage in {
        "card cut": rewrite("card.json", (prepared / "card.json").read_text()[:40]),
        "card a list": rewrite("card.json", "[1, 2]"),
        "card binary": rewrite("card.json", b"\xff\xfe\x00\x01"),
        "card classes a number": rewrite("card.json", json.dumps({**card, "classes": 3})),
        "layout cut": rewrite("store.json", (prepared / "store.json").read_text()[:30]),
        "layout format 1": rewrite("store.json", bad_layout(format=1)),
        "layout shape negative": rewrite("store.json", bad_layout(image_shape=[1, -28, 28])),
        "layout count too big": rewrite("store.json", json.dumps(
            {**layout, "splits": {**layout["splits"], "train": {"count": 10**12, "shards": [
                {"file": "train-00000.npy", "count": 10**12}]}}})),
        "layout file outside": rewrite("store.json", json.dumps(
            {**layout, "splits": {**layout["splits"], "train": {"count": 1, "shards": [
                {"file": "../../etc/passwd", "count": 1}]}}})),
        "shard cut": rewrite("train-00000.npy", shard[:len(shard) // 2]),
        "shard header says float": rewrite("train-00000.npy", shard.replace(b"'|u1'", b"'<f4'", 1)),
        "shard random": rewrite("train-00000.npy", bytes(range(256)) * 8),
        "labels out of range": rewrite("train-labels.npy", npy(labels + 1000)),
        "labels float": rewrite("train-labels.npy", npy(labels.astype(np.float64))),
        "labels a pickle": rewrite("train-labels.npy", pickle.dumps(labels)),
        "labels short": rewrite("train-labels.npy", npy(labels[:3])),
    }.items():
        cases.append(_copy_variant("prepared", folder, prepared, label, damage))
    for kind in ("encoder", "state", "onnx"):
        raw = files[kind].read_bytes()
        cases += _variants(kind, folder, files[kind].name, raw, 4, _doctored(kind, files[kind]))
    return cases


def _doctored(kind: str, path: Path) -> dict[str, bytes]:
    """Well-formed files of the right kind with wrong contents."""
    import io

    import torch

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    if kind == "encoder":
        blob = torch.load(path, weights_only=True)
        no_spec = {k: v for k, v in blob.items() if k != "spec"}
        nan = {**blob, "state_dict": {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                                      for k, v in blob["state_dict"].items()}}
        return {
            "spec missing": saved(no_spec),
            "spec a string": saved({**blob, "spec": "resnet18"}),
            "unknown arch": saved({**blob, "spec": {**blob["spec"], "arch": "vgg"}}),
            "width huge": saved({**blob, "spec": {**blob["spec"], "width": 1e9}}),
            "channels 7": saved({**blob, "spec": {**blob["spec"], "in_channels": 7}}),
            "input missing": saved({k: v for k, v in blob.items() if k != "input"}),
            "std zero": saved({**blob, "input": {**blob["input"], "std": [0.0] * len(blob["input"]["std"])}}),
            "weights NaN": saved(nan),
            "weights wrong shape": saved({**blob, "state_dict": {k: v[..., :1] if v.dim() else v
                                                                 for k, v in blob["state_dict"].items()}}),
            "weights a list": saved({**blob, "state_dict": [1, 2]}),
            "format 99": saved({**blob, "format": 99}),
            "a tensor": saved(torch.zeros(3)),
        }
    if kind == "state":
        blob = torch.load(path, weights_only=True)
        return {
            "step a string": saved({**blob, "step": "ten"}),
            "model missing": saved({k: v for k, v in blob.items() if k != "model"}),
            "rng missing": saved({**blob, "rng": {}}),
            "history a dict": saved({**blob, "history": {}}),
            "a list": saved([blob["step"]]),
        }
    raw = path.read_bytes()
    return {"graph cut mid-way": raw[:len(raw) * 3 // 4], "zeros": bytes(len(raw))}


def _read(case: dict):
    """Read one variant with the project's reader; returns a short description of what it got."""
    import torch

    from byol_core.train.checkpoint import load_encoder
    from byol_core.data.prepared import load_prepared
    from byol_core.onnxmodel import open_session
    from byol_core.train.resume import load_state
    from byol_core.schema.data import DataConfig
    from byol_core.data.sources import cifar, imagefolder, stl10
    from byol_core.data.sources.fashion_mnist import read_idx

    path = Path(case["path"])
    kind = case["reader"]
    if kind == "idx":
        return f"shape {read_idx(path).shape}"
    if kind == "cifar":
        x, y = cifar.read_batch(path, "labels", 10)
        return f"{x.shape} {y.shape}"
    if kind == "stl":
        cfg = DataConfig(source="stl10", source_dir=path, channels=None, image_size=None, test_fraction=0.5,
                         on_corrupt="fail", max_train=None, max_test=None, max_unlabeled=None, shard_mb=1)
        data = stl10.read(cfg)
        return [np.asarray(images[:2]).shape for images in data.images.values()]
    if kind in ("png", "jpeg"):
        pixels, problem, reason = imagefolder.convert_one(str(path), 3, 16)
        if pixels is None:
            assert problem and reason, "a failed conversion names its problem"
            return f"refused: {reason}"
        assert pixels.shape == (3, 16, 16) and pixels.dtype == np.uint8
        return "converted"
    if kind == "prepared":
        prepared = load_prepared(path)
        for split, images in prepared.images.items():
            images[:3]
            images.take(np.array([len(images) - 1]))
        return {split: len(x) for split, x in prepared.images.items()}
    if kind == "encoder":
        encoder, spec, _ = load_encoder(path)
        with torch.no_grad():
            return tuple(encoder(torch.zeros(2, spec.in_channels, 16, 16)).shape)
    if kind == "state":
        return sorted(load_state(path))
    if kind == "onnx":
        session, provider = open_session(path)
        return provider
    raise ValueError(kind)


def worker(cases: list[dict], report) -> None:
    """Read every case and report ("start", i) before and (i, outcome, detail) after each;
    outcome is "ok", "clean" (a ByolError) or "bad" (anything else, with its traceback)."""
    import torch  # noqa: F401  (imported before the cap: the cap is on what reading allocates)

    from byol_core.errors import ByolError

    held = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (held + MEMORY_HEADROOM, resource.RLIM_INFINITY))
    for i, case in enumerate(cases):
        report.put(("start", i))
        try:
            detail = _read(case)
            outcome = ("ok", str(detail)[:200])
        except ByolError as exc:
            outcome = ("clean", str(exc))
        except BaseException as exc:  # noqa: BLE001 - every other outcome is the finding
            outcome = ("bad", "".join(traceback.format_exception(exc))[-3000:])
        report.put((i, *outcome))
    report.put(("done", None))
