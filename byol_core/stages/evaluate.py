"""evaluate: frozen features -> linear probe and kNN, against random-init and pixel baselines."""

from __future__ import annotations

import time

import torch

from byol_core import data
from byol_core.checkpoint import input_normalisation, load_encoder
from byol_core.config import Params
from byol_core.device import resolve_device
from byol_core.errors import ByolError
from byol_core.evaluate import extract_features, knn_top1, linear_probe, pixel_features
from byol_core.nets import build_encoder
from byol_core.storage import write_json, write_text

PARAMS = ("seed", "device", "paths.prepared", "paths.models", "paths.metrics", "knn", "evaluate")


def run(params: Params) -> tuple[str, dict]:
    prepared = data.load_prepared(params.paths.prepared, ("train", "test"))
    encoder, spec, info = load_encoder(params.paths.encoder)
    if spec.in_channels != prepared.card["channels"]:
        raise ByolError(f"{params.paths.encoder} expects {spec.in_channels}-channel images but the prepared "
                        f"data has {prepared.card['channels']}. Run `byol pretrain` on this data again.")
    device = resolve_device(params.device)
    mean, std = input_normalisation(info)
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
