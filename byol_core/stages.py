"""The four stage entry points. Each reads its inputs, calls the pure code, writes its
outputs atomically and returns ``(one-line summary, metrics)``. The CLI and any
orchestrator call these; none of them knows who called it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time

import torch

from byol_core import data
from byol_core.augment import to_input
from byol_core.checkpoint import load_encoder, save_encoder
from byol_core.config import Params
from byol_core.device import resolve_device
from byol_core.errors import ByolError
from byol_core.evaluate import extract_features, knn_top1, linear_probe, pixel_features
from byol_core.export import check_parity, export_onnx, measure_latency, open_session
from byol_core.nets import build_encoder, count_parameters
from byol_core.storage import atomic_write, write_json, write_text
from byol_core.train import pretrain

StageResult = tuple[str, dict]


def run_ingest(params: Params) -> StageResult:
    card = data.ingest(params.data, params.paths.raw, params.paths.prepared)
    splits = card["splits"]
    line = (f"ingest: {card['source']} {splits['train']} train / {splits['test']} test, "
            f"{card['channels']}x{card['height']}x{card['width']} -> {params.paths.prepared} "
            f"(data {card['data_hash']}, {card['seconds']:.1f}s)")
    return line, {"n_train": splits["train"], "n_test": splits["test"], "data_hash": card["data_hash"]}


def _curve_csv(history: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def run_pretrain(params: Params) -> StageResult:
    prepared = data.load_prepared(params.paths.prepared)
    device = resolve_device(params.device)
    started = time.perf_counter()
    state, schedule = pretrain(params, prepared, device)
    card = prepared.card
    encoder = state.model.encoder
    save_encoder(params.paths.encoder, encoder, state.model.spec,
                 {"size": card["height"], "mean": card["mean"], "std": card["std"]})
    # The loop always checkpoints its last epoch, so the resume state *is* the final full
    # state: publish a copy of it rather than serialising the same state again.
    resume = params.paths.resume_state
    atomic_write(params.paths.checkpoint, lambda tmp: shutil.copyfile(resume, tmp))
    history = state.history
    last = history[-1]
    total_images = sum(row["images_per_sec"] * row["seconds"] for row in history)
    metrics = {
        "final_loss": last["loss"],
        "epochs": last["epoch"],
        "steps": state.step,
        "total_steps": schedule.total_steps,
        "peak_lr": schedule.peak_lr,
        "images_per_sec": total_images / sum(row["seconds"] for row in history),
        "collapse_std": last["collapse_std"],
        "knn_top1": last["knn_top1"],
        "encoder_parameters": count_parameters(encoder),
        "device": str(device),
    }
    write_json(params.paths.pretrain_metrics, metrics)
    write_text(params.paths.pretrain_curve, _curve_csv(history))
    resume.unlink()  # finished: nothing left to resume
    line = (f"pretrain: {metrics['epochs']} epochs, {state.step} steps on {device} in "
            f"{time.perf_counter() - started:.0f}s, loss {metrics['final_loss']:.4f}, "
            f"collapse {metrics['collapse_std']:.3f}, knn {metrics['knn_top1']:.4f}, "
            f"{metrics['images_per_sec']:.0f} img/s -> {params.paths.encoder}")
    return line, metrics


def _input_tensors(info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(info["mean"]), torch.tensor(info["std"])


def run_evaluate(params: Params) -> StageResult:
    prepared = data.load_prepared(params.paths.prepared)
    encoder, spec, info = load_encoder(params.paths.encoder)
    if spec.in_channels != prepared.card["channels"]:
        raise ByolError(f"{params.paths.encoder} expects {spec.in_channels}-channel images but the prepared "
                        f"data has {prepared.card['channels']}. Run `byol pretrain` on this data again.")
    device = resolve_device(params.device)
    mean, std = _input_tensors(info)
    cfg = params.evaluate
    classes = prepared.card["classes"]
    x_train, y_train = prepared.images["train"], prepared.labels["train"]
    x_test, y_test = prepared.images["test"], prepared.labels["test"]

    started = time.perf_counter()
    torch.manual_seed(params.seed)
    random_encoder = build_encoder(spec)
    features = {}
    for name, net in (("byol", encoder), ("random_init", random_encoder)):
        net = net.to(device)
        features[name] = (extract_features(net, x_train, mean, std, cfg.batch_size, device),
                          extract_features(net, x_test, mean, std, cfg.batch_size, device))
    features["pixels"] = (pixel_features(x_train, mean, std), pixel_features(x_test, mean, std))
    probes = {name: linear_probe(f_train, y_train, f_test, y_test, len(classes), cfg, params.seed)
              for name, (f_train, f_test) in features.items()}
    byol_train, byol_test = features["byol"]
    knn = knn_top1(byol_train, y_train, byol_test, y_test, len(classes), params.knn)

    metrics = {
        "linear_top1": probes["byol"].top1,
        "linear_top5": probes["byol"].top5,
        "knn_top1": knn,
        "random_init_linear_top1": probes["random_init"].top1,
        "pixels_linear_top1": probes["pixels"].top1,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "probe": {name: result.summary() for name, result in probes.items()},
    }
    write_json(params.paths.eval_metrics, metrics)
    rows = "actual,predicted\n" + "".join(
        f'"{classes[a]}","{classes[p]}"\n' for a, p in zip(y_test, probes["byol"].predictions))
    write_text(params.paths.eval_predictions, rows)
    line = (f"evaluate: linear {metrics['linear_top1']:.4f} (top5 {metrics['linear_top5']:.4f}), "
            f"knn {knn:.4f}; baselines: random-init {metrics['random_init_linear_top1']:.4f}, "
            f"pixels {metrics['pixels_linear_top1']:.4f} on {metrics['n_test']} test images "
            f"({time.perf_counter() - started:.0f}s)")
    return line, metrics


def run_export(params: Params) -> StageResult:
    cfg = params.export
    paths = params.paths
    encoder, spec, info = load_encoder(paths.encoder)
    prepared = data.load_prepared(paths.prepared)
    mean, std = _input_tensors(info)
    images = to_input(torch.as_tensor(prepared.images["test"][:cfg.parity_images]), mean, std)
    if images.shape[1] != spec.in_channels:
        raise ByolError(f"{paths.encoder} expects {spec.in_channels}-channel images but the prepared test "
                        f"images have {images.shape[1]}. Run `byol pretrain` on this data again.")
    sidecar = {
        "input_name": "images", "output_name": "features",
        "input_shape": ["batch", spec.in_channels, info["size"], info["size"]],
        "input_dtype": "float32", "channels": spec.in_channels,
        "normalisation": {"scale": "uint8 / 255", "mean": info["mean"], "std": info["std"]},
        "output_dim": spec.feature_dim, "encoder": spec.to_dict(), "opset": cfg.opset,
    }
    candidate = paths.onnx.with_name(f".{paths.onnx.name}.candidate")
    export_onnx(encoder, images[:2], candidate, cfg.opset, cfg.max_batch,
                {"byol.input": str(sidecar["input_shape"]), "byol.mean": str(info["mean"]),
                 "byol.std": str(info["std"]), "byol.encoder": str(spec.to_dict())})
    try:
        session, provider = open_session(candidate)
        parity = check_parity(session, encoder, images, cfg.atol, cfg.rtol)
        if not parity["parity_ok"]:
            raise ByolError(f"export: onnxruntime ({provider}) disagrees with PyTorch: max abs diff "
                            f"{parity['max_abs_diff']:.3g} exceeds atol={cfg.atol}, rtol={cfg.rtol} on "
                            f"{len(images)} test images. No new ONNX file was written; anything at "
                            f"{paths.onnx} is from an earlier run.")
        metrics = {**parity, "provider": provider, "opset": cfg.opset, "n_images": int(len(images)),
                   **measure_latency(session, images.numpy())}
        # Sidecar and metrics first, the model last: its arrival marks a complete export.
        write_json(paths.onnx_meta, sidecar)
        write_json(paths.export_metrics, metrics)
        os.replace(candidate, paths.onnx)
    finally:
        candidate.unlink(missing_ok=True)
    line = (f"export: {paths.onnx} (opset {cfg.opset}, dynamic batch), parity max abs diff "
            f"{metrics['max_abs_diff']:.2e} on {provider}, {metrics['latency_ms_batch1']:.2f} ms at batch 1")
    return line, metrics

