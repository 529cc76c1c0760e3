"""The stages as five assets: prepared_dataset (scan and ingest) -> byol_encoder -> linear_eval
-> onnx_encoder -> image_embeddings.

Each asset runs its DVC stage (see resources.DvcProject.repro) and turns what the stage
wrote into metadata; the asset's DataVersion is a hash of the stage's DVC output hashes,
so an asset whose stage DVC skipped keeps its version. No hyperparameter is set here:
params.yaml is their only source, and run config holds only run knobs.
"""

import json
import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from byol_core import metrics

from byol_core.data.card import read_store
from byol_core.config import Params
from byol_core.errors import ByolError
from pipelines.k8s import PRETRAIN_POD
from pipelines.plots import curves_markdown, picture
from pipelines.resources import LOCK_ENTRY, DvcProject
from pipelines.restore import Earlier
from pipelines.workers import CPU_QUEUE, GPU_QUEUE, QUEUE_TAG

GROUP = "byol"
POOL = "dvc"  # DVC locks the whole repository: every asset that runs it shares this pool (limit 1)
# Only failures marked retryable by DvcProject (a held lock, a process killed from outside)
# are retried: 2 more attempts, 20 s then 40 s later. Not through a RetryPolicy, which
# Dagster also applies to an interrupted step, so that a run cancelled in the UI would
# start its stage again instead of stopping.
MAX_RETRIES, RETRY_DELAY = 2, 20


class StageConfig(dg.Config):
    """Run knobs only; hyperparameters live in params.yaml."""

    force: bool = Field(default=False, description="Run the DVC stage even when its inputs did not "
                        "change (`dvc repro --force`); otherwise DVC skips an up-to-date stage.")


# A stage runs when anything upstream has a new version (a stage that ran upstream), and
# only once the blocking checks upstream have passed.
AUTOMATION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
# Ingest runs when the raw files' data version differs from the one the previous
# evaluation saw (held until ingest is requested or materialized, so a change seen while a
# run is in progress is not dropped), or when it was never materialized and the raw files
# have a version. Versions, not event ids: the observation sensor and this evaluation tick
# at the same moments, and an observation stored while an evaluation runs would be missed
# by eager()'s "updated since the last evaluation" and then, seen late, counted a second
# time. "Never materialized" covers an observation stored before the automation sensor's
# first evaluation, which has nothing to compare with; it is not asked for again on the
# tick after the request, nor after a failed attempt (the next new version retries).
NEVER_RUN = (dg.AutomationCondition.missing() & ~dg.AutomationCondition.any_deps_missing()
             & ~dg.AutomationCondition.newly_requested() & ~dg.AutomationCondition.execution_failed())
INGEST_AUTOMATION = ((dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
                      .since_last_handled() | NEVER_RUN)
                     & ~dg.AutomationCondition.in_progress())
RAW_KEY = dg.AssetKey("raw_source_files")


def _raw_source_files(dvc: DvcProject) -> dg.ObserveResult:
    params = dvc.params()
    return observe_folder(params.data.source_dir, params.paths.cache)


with warnings.catch_warnings():  # the decorator is marked beta; its use here is plain
    warnings.simplefilter("ignore", dg.BetaWarning)
    raw_source_files = dg.observable_source_asset(key=RAW_KEY, group_name=GROUP, description=(
        "The source files in params.yaml's data.source_dir. Observing them scans the folder as `byol scan` does "
        "(reading only new or changed files) and gives a data version: the md5 of the source listing, the same "
        "that dvc.lock records for it, so added, removed or changed contents make a new version and a touched "
        "file does not."))(_raw_source_files)


def scan_source(folder: Path, cache: Path) -> tuple[str, int, int]:
    """(fingerprint, files, bytes) of ``folder``: the scan of the scan stage (byol_core.data.scan),
    with the side cache in ``cache`` (params' paths.cache), so only new or changed files are
    read. The fingerprint is the md5 of the listing's bytes, what dvc.lock records for
    paths.listing; the listing itself is not written (it is the scan stage's output). The
    scan runs in a process of its own: at a million files it holds about 200 MiB for a few
    seconds, which the code location (a long-lived process) would otherwise keep."""
    done = subprocess.run([sys.executable, "-m", "byol_core.data.scan", str(folder), str(cache)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise dg.Failure(description=said[-1] if said else f"the scan of {folder} exited {done.returncode}",
                         allow_retries=False)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return found["md5"], found["files"], found["bytes"]


def source_fingerprint(folder: Path, cache: Path) -> str:
    return scan_source(folder, cache)[0]


def observe_folder(folder: Path, cache: Path) -> dg.ObserveResult:
    """The source folder's data version (its listing's md5) and size."""
    fingerprint, files, size = scan_source(folder, cache)
    return dg.ObserveResult(data_version=dg.DataVersion(fingerprint), metadata={
        "folder": dg.MetadataValue.path(str(folder)), "files": dg.MetadataValue.int(files),
        "MiB": dg.MetadataValue.float(round(size / 2**20, 1))})


COMPUTED_IN = "computed in run"
RECOMPUTED = "recomputed"
OUTSIDE = "outside Dagster (dvc repro or make run)"


HISTORY = 100  # earlier materializations searched for the run that made the current outputs


def computed_in(context: dg.AssetExecutionContext, version: dg.DataVersion) -> dict:
    """For a stage DVC skipped (or restored from its run-cache): the run that made its current
    outputs, as named by the latest materialization with the same data version (among the
    last HISTORY). With none, the outputs were made outside Dagster, by `dvc repro`."""
    for record in context.instance.fetch_materializations(context.asset_key, limit=HISTORY).records:
        earlier = record.asset_materialization
        if earlier is not None and earlier.tags.get("dagster/data_version") == version.value:
            named = earlier.metadata.get(COMPUTED_IN)
            return {COMPUTED_IN: dg.MetadataValue.text(named.value if named is not None else record.run_id)}
    return {COMPUTED_IN: dg.MetadataValue.text(OUTSIDE)}


def upstream_locks(context: dg.AssetExecutionContext) -> dict[str, dict]:
    """The dvc.lock entries of the stages upstream, as their latest materializations recorded
    them (on whichever machine ran them): what this stage's inputs are."""
    return lock_entries(context.instance, context.assets_def.dependency_keys)


def earlier_entries(context: dg.AssetExecutionContext, stage: str) -> list[Earlier]:
    """This asset's earlier dvc.lock entries of ``stage``, newest first, each once (among its
    last HISTORY materializations): runs whose outputs another machine may restore."""
    found, seen = [], set()
    for record in context.instance.fetch_materializations(context.asset_key, limit=HISTORY).records:
        event = record.asset_materialization
        value = getattr(event.metadata.get(LOCK_ENTRY), "value", None) if event is not None else None
        if isinstance(value, dict) and value.get("stage") == stage and isinstance(value.get("entry"), dict):
            key = json.dumps(value["entry"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                found.append(Earlier(record.run_id, value["entry"]))
    return found


def lock_entries(instance: dg.DagsterInstance, keys) -> dict[str, dict]:
    """Stage name -> dvc.lock entry, as the latest materialization of each asset in ``keys``
    recorded it (assets never materialized with a shared remote have none)."""
    entries = {}
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        found = event.asset_materialization.metadata.get(LOCK_ENTRY) if event and event.asset_materialization else None
        if found is not None and isinstance(found.value, dict) and "stage" in found.value:
            entries[found.value["stage"]] = found.value["entry"]
    return entries


def _repro(context: dg.AssetExecutionContext, dvc: DvcProject, stage: str, force: bool, **kwargs):
    """``dvc.repro``, turning a failure that may pass (a held lock, a killed stage) into a retry."""
    try:
        return dvc.repro(context, stage, force, **kwargs)
    except dg.Failure as failure:
        if failure.allow_retries and context.retry_number < MAX_RETRIES:
            raise dg.RetryRequested(max_retries=MAX_RETRIES,
                                    seconds_to_wait=RETRY_DELAY * 2 ** context.retry_number) from failure
        raise


def stage_asset(name: str, stage: str, deps: list, kinds: set[str], description: str,
                describe: Callable[[Params], dict], automation: dg.AutomationCondition = AUTOMATION,
                op_tags: Mapping[str, object] | None = None, first: str | None = None) -> dg.AssetsDefinition:
    """An asset that runs DVC stage ``stage`` and describes its outputs with ``describe``;
    ``op_tags`` reach the step's executor (its Kubernetes pod, see pipelines/k8s.py; its Celery
    queue, see pipelines/workers.py: cpu unless they name another);
    ``first``: a stage to run before it, in the same step (ingest's scan, whose listing is
    ingest's input: without it DVC would not see new files)."""

    @dg.asset(name=name, group_name=GROUP, pool=POOL, deps=deps, op_tags={QUEUE_TAG: CPU_QUEUE, **(op_tags or {})},
              kinds={"dvc", *kinds}, description=description, automation_condition=automation)
    def _asset(context: dg.AssetExecutionContext, config: StageConfig, dvc: DvcProject) -> dg.MaterializeResult:
        upstream = upstream_locks(context) if dvc.remote else None
        # The first stage's outputs go to the remote with this stage's, in one push (or none,
        # when this stage's inputs were run and pushed before).
        before = _repro(context, dvc, first, config.force, publish=False) if first else None
        run = _repro(context, dvc, stage, config.force, upstream=upstream,
                     earlier=earlier_entries(context, stage) if dvc.remote else None, along=(first,) if first else ())
        # The figures come from the stage's outputs either way: those it just wrote, or, when
        # DVC skipped it, those DVC just found current (dvc.lock's hashes), which are the
        # figures of the run that made them. So every materialization shows them; the
        # marker says whether they were recomputed, and by which run.
        if run.ran:
            origin = {COMPUTED_IN: dg.MetadataValue.text(context.run.run_id)}
        else:
            origin = computed_in(context, run.data_version)
            context.log.info(f"{stage}: figures read from its current outputs, not recomputed: they are those "
                             f"of the run that made them ({origin[COMPUTED_IN].value})")
        # The first stage's outputs (scan's listing) by their DVC hashes: which record of the
        # source this dataset was checked against.
        extra = {f"dvc md5 {path}": dg.MetadataValue.text(md5) for path, md5 in before.outs.items()} if before else {}
        return dg.MaterializeResult(metadata={**describe(dvc.params()), **run.metadata(), **extra,
                                              RECOMPUTED: dg.MetadataValue.bool(run.ran), **origin},
                                    data_version=run.data_version)

    return _asset


def _dataset(params: Params) -> dict:
    prepared = params.paths.prepared
    try:
        card, layout = read_store(prepared)
    except ByolError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    listing = params.paths.listing
    listed = {"source files": dg.MetadataValue.int(pq.read_metadata(listing).num_rows),
              "source listing": dg.MetadataValue.path(str(listing))} if listing.is_file() else {}
    shards = [shard for split in layout.splits.values() for shard in split.shards]
    pixels = sum(shard.count for shard in shards) * card.channels * card.height * card.width
    return {
        "source": card.source,
        "train images": dg.MetadataValue.int(card.splits["train"]),
        "test images": dg.MetadataValue.int(card.splits["test"]),
        "unlabeled images": dg.MetadataValue.int(card.splits.get("unlabeled", 0)),
        "exact duplicates": dg.MetadataValue.int(card.duplicates),
        "test images also in train": dg.MetadataValue.int(card.test_in_train),
        "skipped files": dg.MetadataValue.int(card.skipped),
        "image shape": f"{card.channels}x{card.height}x{card.width}",
        "classes": dg.MetadataValue.int(len(card.classes)),
        "data hash": card.data_hash,
        "image shards": dg.MetadataValue.int(len(shards)),
        "pixels (MiB)": dg.MetadataValue.float(round(pixels / 2**20, 1)),
        "path": dg.MetadataValue.path(str(prepared)),
        **listed,
    }


def figures(cls: type, path: Path, stage: str):
    """A stage's figures file, read and checked as its type (byol_core.metrics)."""
    try:
        return metrics.read(cls, path, stage)
    except ByolError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def shown(found) -> dict:
    """The fields of ``found`` that a page shows, under their labels (byol_core.metrics.shown)."""
    out = {}
    for label, spec, value in metrics.labelled(found):
        if isinstance(value, bool):
            out[label] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            out[label] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[label] = dg.MetadataValue.float(float(f"{value:{spec}}"))
        else:
            out[label] = dg.MetadataValue.text(str(value))
    return out


def _encoder(params: Params) -> dict:
    paths = params.paths
    return {
        **shown(figures(metrics.PretrainMetrics, paths.pretrain_metrics, "pretrain")),
        "training curves": curves_markdown(paths.pretrain_curve, paths.pretrain_steps),
        "encoder": dg.MetadataValue.path(str(paths.encoder)),
        "checkpoint": dg.MetadataValue.path(str(paths.checkpoint)),
    }


FEATURES = {"byol": "BYOL encoder", "random_init": "random-init encoder", "pixels": "raw pixels"}


def _probe_table(found: metrics.EvalMetrics) -> dg.MetadataValue:
    """The probe's top-1/top-5 and the features' spread, BYOL beside its two baselines."""
    schema = dg.TableSchema(columns=[dg.TableColumn("features", "string"), dg.TableColumn("top1", "float"),
                                     dg.TableColumn("top5", "float"), dg.TableColumn("effective rank", "float"),
                                     dg.TableColumn("mean cosine", "float")])
    return dg.MetadataValue.table([dg.TableRecord({"features": FEATURES[key], "top1": round(probe.top1, 4),
                                                   "top5": round(probe.top5, 4),
                                                   "effective rank": round(found.spread[key].effective_rank, 2),
                                                   "mean cosine": round(found.spread[key].mean_cosine, 4)})
                                   for key, probe in ((k, found.probe[k]) for k in FEATURES if k in found.probe)],
                                  schema=schema)


def _evaluation(params: Params) -> dict:
    found = figures(metrics.EvalMetrics, params.paths.eval_metrics, "evaluate")
    byol = found.retrieval["byol"]
    return {
        **shown(found),
        "probe vs baselines": _probe_table(found),
        "retrieval recall@1": dg.MetadataValue.float(round(byol.recall_at_1, 4)),
        "retrieval recall@5": dg.MetadataValue.float(round(byol.recall_at_5, 4)),
        "retrieval mAP@R": dg.MetadataValue.float(round(byol.map_at_r, 4)),
        "label efficiency": _efficiency_table(found.label_efficiency),
        "label efficiency curve": picture(params.paths.eval_label_efficiency, "label efficiency"),
        "metrics": dg.MetadataValue.path(str(params.paths.eval_metrics)),
    }


def _efficiency_table(efficiency: dict) -> dg.MetadataValue:
    """Linear top-1 per feature set (rows) and share of train labels (columns)."""
    shares = sorted(next(iter(efficiency.values())), key=float)
    columns = [dg.TableColumn("features", "string")] + [dg.TableColumn(f"{float(s):.0%} labels", "float") for s in shares]
    return dg.MetadataValue.table(
        [dg.TableRecord({"features": FEATURES.get(name, name), **{f"{float(s):.0%} labels": round(row[s], 4) for s in shares}})
         for name, row in efficiency.items()], schema=dg.TableSchema(columns=columns))


def _onnx(params: Params) -> dict:
    found = figures(metrics.ExportMetrics, params.paths.export_metrics, "export")
    return {
        **shown(found),
        **{f"latency ms at batch {batch}": dg.MetadataValue.float(round(ms, 3)) for batch, ms in found.latency.items()},
        "onnx": dg.MetadataValue.path(str(params.paths.onnx)),
    }


def _embeddings(params: Params) -> dict:
    paths = params.paths
    found = figures(metrics.EmbedMetrics, paths.embed_metrics, "embed")
    dup = found.near_duplicates
    return {
        **shown(found),
        **({"near-duplicate threshold (cosine)": dg.MetadataValue.float(dup.threshold),
            "test images with a near-duplicate in train": dg.MetadataValue.int(dup.test_with_train_near_duplicate),
            "near-duplicate pairs within train": dg.MetadataValue.int(dup.train_pairs)} if dup is not None else {}),
        "nearest neighbours": picture(paths.neighbours_png, "test queries and their nearest training images"),
        "embedding map": picture(paths.embedding_map_png, "test embeddings, 2-D"),
        "embeddings": dg.MetadataValue.path(str(paths.embeddings_file)),
        "near-duplicate list": dg.MetadataValue.path(str(paths.embeddings / "near_duplicates.csv")),
    }


prepared_dataset = stage_asset(
    "prepared_dataset", "ingest", [RAW_KEY], {"numpy"},
    "`byol scan`, then `byol ingest`: the source listing (data/source.parquet), then the source images as uint8 "
    "shards, a manifest and a dataset card (data/prepared/). Ingest reruns only when the listing changed.",
    _dataset, INGEST_AUTOMATION, first="scan")
byol_encoder = stage_asset(
    "byol_encoder", "pretrain", [prepared_dataset], {"pytorch"},
    "`byol pretrain`: the BYOL-trained encoder (models/encoder.pt) and full checkpoint.",
    _encoder, op_tags={**PRETRAIN_POD, QUEUE_TAG: GPU_QUEUE})  # on Kubernetes a pod with one GPU; on Celery a gpu worker
linear_eval = stage_asset(
    "linear_eval", "evaluate", [prepared_dataset, byol_encoder], {"pytorch"},
    "`byol evaluate`: linear probe and kNN on frozen features, against a random-init encoder and raw "
    "pixels (metrics/eval.json).",
    _evaluation)
onnx_encoder = stage_asset(
    "onnx_encoder", "export", [prepared_dataset, byol_encoder, linear_eval], {"onnx"},
    "`byol export`: the encoder as one ONNX file with a dynamic batch, checked against PyTorch. Runs "
    "after linear_eval so that its blocking check gates what ships.",
    _onnx)

image_embeddings = stage_asset(
    "image_embeddings", "embed", [prepared_dataset, onnx_encoder], {"onnx", "parquet"},
    "`byol embed`: every prepared image through the shipped ONNX file (onnxruntime), l2-normalised, as "
    "Parquet (data/embeddings/), with near-duplicates and pictures. Gated by onnx_encoder's parity check; "
    "`byol neighbours` searches it.",
    _embeddings)

ASSETS = [prepared_dataset, byol_encoder, linear_eval, onnx_encoder, image_embeddings]
