"""The four stages as assets: prepared_dataset -> byol_encoder -> linear_eval -> onnx_encoder.

Each asset runs its DVC stage (see resources.DvcProject.repro) and turns what the stage
wrote into metadata; the asset's DataVersion is a hash of the stage's DVC output hashes,
so an asset whose stage DVC skipped keeps its version. No hyperparameter is set here:
params.yaml is their only source, and run config holds only run knobs.
"""

import dagster as dg
from pydantic import Field

from pipelines.plots import curves_markdown
from pipelines.resources import DvcProject, StageRun, json_file

GROUP = "byol"
POOL = "dvc"  # DVC locks the whole repository: every asset that runs it shares this pool (limit 1)
# Only failures marked retryable by DvcProject (a held lock, a killed process) are retried.
RETRY = dg.RetryPolicy(max_retries=2, delay=20, backoff=dg.Backoff.EXPONENTIAL)


class StageConfig(dg.Config):
    """Run knobs only; hyperparameters live in params.yaml."""

    force: bool = Field(default=False, description="Run the DVC stage even when its inputs did not "
                        "change (`dvc repro --force`); otherwise DVC skips an up-to-date stage.")


def _result(run: StageRun, metadata: dict) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={**metadata, **run.metadata()}, data_version=run.data_version)


@dg.asset(group_name=GROUP, pool=POOL, retry_policy=RETRY, kinds={"dvc", "numpy"},
          description="`byol ingest`: the source images as uint8 arrays, a manifest and a dataset card "
                      "(data/prepared/).")
def prepared_dataset(context: dg.AssetExecutionContext, config: StageConfig, dvc: DvcProject) -> dg.MaterializeResult:
    run = dvc.repro(context, "ingest", config.force)
    prepared = dvc.params().paths.prepared
    card = json_file(prepared / "card.json")
    return _result(run, {
        "source": card["source"],
        "train images": dg.MetadataValue.int(card["splits"]["train"]),
        "test images": dg.MetadataValue.int(card["splits"]["test"]),
        "image shape": f"{card['channels']}x{card['height']}x{card['width']}",
        "classes": dg.MetadataValue.int(len(card["classes"])),
        "data hash": card["data_hash"],
        "path": dg.MetadataValue.path(str(prepared)),
    })


@dg.asset(group_name=GROUP, pool=POOL, retry_policy=RETRY, deps=[prepared_dataset], kinds={"dvc", "pytorch"},
          description="`byol pretrain`: the BYOL-trained encoder (models/encoder.pt) and full checkpoint.")
def byol_encoder(context: dg.AssetExecutionContext, config: StageConfig, dvc: DvcProject) -> dg.MaterializeResult:
    run = dvc.repro(context, "pretrain", config.force)
    paths = dvc.params().paths
    metrics = json_file(paths.pretrain_metrics)
    return _result(run, {
        "final loss": dg.MetadataValue.float(metrics["final_loss"]),
        "epochs": dg.MetadataValue.int(metrics["epochs"]),
        "steps": dg.MetadataValue.int(metrics["steps"]),
        "images per second": dg.MetadataValue.float(round(metrics["images_per_sec"], 1)),
        "collapse std": dg.MetadataValue.float(metrics["collapse_std"]),
        "monitor kNN top-1": dg.MetadataValue.float(metrics["knn_top1"]),
        "encoder parameters": dg.MetadataValue.int(metrics["encoder_parameters"]),
        "device": metrics["device"],
        "training curves": curves_markdown(paths.pretrain_curve),
        "encoder": dg.MetadataValue.path(str(paths.encoder)),
        "checkpoint": dg.MetadataValue.path(str(paths.checkpoint)),
    })


def _probe_table(metrics: dict) -> dg.MetadataValue:
    rows = [("BYOL encoder", metrics["linear_top1"], metrics["linear_top5"]),
            ("random-init encoder", metrics["random_init_linear_top1"], metrics["probe"]["random_init"]["top5"]),
            ("raw pixels", metrics["pixels_linear_top1"], metrics["probe"]["pixels"]["top5"])]
    schema = dg.TableSchema(columns=[dg.TableColumn("features", "string"), dg.TableColumn("top1", "float"),
                                     dg.TableColumn("top5", "float")])
    return dg.MetadataValue.table([dg.TableRecord({"features": name, "top1": round(top1, 4), "top5": round(top5, 4)})
                                   for name, top1, top5 in rows], schema=schema)


@dg.asset(group_name=GROUP, pool=POOL, retry_policy=RETRY, deps=[prepared_dataset, byol_encoder],
          kinds={"dvc", "pytorch"},
          description="`byol evaluate`: linear probe and kNN on frozen features, against a random-init "
                      "encoder and raw pixels (metrics/eval.json).")
def linear_eval(context: dg.AssetExecutionContext, config: StageConfig, dvc: DvcProject) -> dg.MaterializeResult:
    run = dvc.repro(context, "evaluate", config.force)
    paths = dvc.params().paths
    metrics = json_file(paths.eval_metrics)
    return _result(run, {
        "linear top-1": dg.MetadataValue.float(metrics["linear_top1"]),
        "linear top-5": dg.MetadataValue.float(metrics["linear_top5"]),
        "kNN top-1": dg.MetadataValue.float(metrics["knn_top1"]),
        "random-init linear top-1": dg.MetadataValue.float(metrics["random_init_linear_top1"]),
        "pixels linear top-1": dg.MetadataValue.float(metrics["pixels_linear_top1"]),
        "test images": dg.MetadataValue.int(metrics["n_test"]),
        "probe vs baselines": _probe_table(metrics),
        "metrics": dg.MetadataValue.path(str(paths.eval_metrics)),
    })


@dg.asset(group_name=GROUP, pool=POOL, retry_policy=RETRY, deps=[prepared_dataset, byol_encoder, linear_eval],
          kinds={"dvc", "onnx"},
          description="`byol export`: the encoder as one ONNX file with a dynamic batch, checked against "
                      "PyTorch. Runs after linear_eval so that its blocking check gates what ships.")
def onnx_encoder(context: dg.AssetExecutionContext, config: StageConfig, dvc: DvcProject) -> dg.MaterializeResult:
    run = dvc.repro(context, "export", config.force)
    paths = dvc.params().paths
    metrics = json_file(paths.export_metrics)
    return _result(run, {
        "parity max abs diff": dg.MetadataValue.float(metrics["max_abs_diff"]),
        "parity ok": dg.MetadataValue.bool(metrics["parity_ok"]),
        "provider": metrics["provider"],
        "opset": dg.MetadataValue.int(metrics["opset"]),
        "latency ms at batch 1": dg.MetadataValue.float(round(metrics["latency_ms_batch1"], 3)),
        "onnx": dg.MetadataValue.path(str(paths.onnx)),
    })


ASSETS = [prepared_dataset, byol_encoder, linear_eval, onnx_encoder]
