"""export: the encoder -> one ONNX file with a dynamic batch, checked against PyTorch."""

from __future__ import annotations

import json
import shutil

import torch

from byol_core import metrics

from byol_core.data.prepared import load_prepared
from byol_core.train.checkpoint import input_normalisation, load_encoder
from byol_core.errors import ByolError
from byol_core.export import check_parity, export_onnx, measure_latency
from byol_core.inputs import to_input
from byol_core.onnxmodel import PREPROCESS_KEY, RESIZE, open_session, preprocess_record
from byol_core.schema.export import ExportParams
from byol_core.io.storage import StageCommit, json_writer

VIEW = ExportParams  # the params keys this stage reads (dvc.yaml's params: list)


def run(params: ExportParams) -> tuple[str, dict]:
    outputs = StageCommit("export", params.paths.models)
    outputs.recover()
    cfg = params.export
    paths = params.paths
    encoder, spec, info = load_encoder(paths.encoder)
    prepared = load_prepared(paths.prepared, ("test",))
    mean, std = input_normalisation(info)
    images = to_input(torch.as_tensor(prepared.images["test"][:cfg.parity_images]), mean, std)
    if images.shape[1] != spec.in_channels:
        raise ByolError(f"{paths.encoder} expects {spec.in_channels}-channel images but the prepared test "
                        f"images have {images.shape[1]}. Run `byol pretrain` on this data again.")
    data_hash = prepared.card.data_hash
    preprocess = preprocess_record(spec.in_channels, info["size"], info["mean"], info["std"])
    sidecar = {
        "input_name": "images", "output_name": "features",
        "input_shape": ["batch", spec.in_channels, info["size"], info["size"]],
        "input_dtype": "float32", "channels": spec.in_channels,
        "normalisation": {"scale": "uint8 / 255", "mean": info["mean"], "std": info["std"]},
        "preprocess": preprocess, "data_hash": data_hash,
        "output_dim": spec.feature_dim, "encoder": spec.to_dict(), "opset": cfg.opset,
    }
    # The file describes itself: a client needs no sidecar and none of our code (onnxmodel).
    metadata = {PREPROCESS_KEY: json.dumps(preprocess), "byol.data_hash": data_hash,
                "byol.output_dim": str(spec.feature_dim), "byol.input": json.dumps(sidecar["input_shape"]),
                "byol.mean": json.dumps(info["mean"]), "byol.std": json.dumps(info["std"]),
                "byol.encoder": json.dumps(spec.to_dict())}
    doc = (f"BYOL image encoder ({spec.arch}, width {spec.width}). Input 'images': float32 "
           f"(batch, {spec.in_channels}, {info['size']}, {info['size']}) = (uint8 pixels / 255 - mean) / std per "
           f"channel, mean {info['mean']}, std {info['std']} ({preprocess['colour']}; resize {RESIZE}). Output "
           f"'features': (batch, {spec.feature_dim}), compared by cosine similarity. Trained on data {data_hash}; "
           f"the metadata key {PREPROCESS_KEY} holds this as JSON.")
    candidate = paths.onnx.with_name(f".{paths.onnx.name}.candidate")
    export_onnx(encoder, images[:2], candidate, cfg.opset, cfg.max_batch, metadata, doc)
    try:
        session, provider = open_session(candidate)
        parity = check_parity(session, encoder, images, cfg.atol, cfg.rtol)
        if not parity["parity_ok"]:
            raise ByolError(f"export: onnxruntime ({provider}) disagrees with PyTorch: max abs diff "
                            f"{parity['max_abs_diff']:.3g} exceeds atol={cfg.atol}, rtol={cfg.rtol} on "
                            f"{len(images)} test images. No new ONNX file was written; anything at "
                            f"{paths.onnx} is from an earlier run.")
        figures = metrics.ExportMetrics(**metrics.ExportMetrics.from_json({
            **parity, "provider": provider, "opset": cfg.opset, "n_images": int(len(images)),
            **measure_latency(session, images.numpy())}))
        outputs.write([(paths.onnx_meta, json_writer(sidecar)), (paths.export_metrics, metrics.writer(figures)),
                       (paths.onnx, lambda tmp: shutil.copyfile(candidate, tmp))])
    finally:
        candidate.unlink(missing_ok=True)
    line = (f"export: {paths.onnx} (opset {cfg.opset}, dynamic batch), parity max abs diff "
            f"{figures.max_abs_diff:.2e} on {provider}, {figures.latency['1']:.2f} ms at batch 1")
    return line, metrics.to_json(figures)
