"""Asset checks. All are blocking: a failure stops the assets after it in the same run,
and says why with the numbers. Thresholds come from params.yaml's ``checks`` section.

A check may run on another machine than the stage it checks (a Celery worker of its own):
with a shared DVC remote it first pulls the outputs it reads, as their stages recorded them.
The measurements that need torch or onnxruntime run as `byol check` in a process of their
own, as the stages do: the Dagster process imports neither. With a shared remote, a check
whose subject (the published outputs it reads, by their md5s; params.yaml; the code) is the
one an earlier evaluation measured takes that evaluation's figures instead of pulling the
outputs and measuring them again: a run restored from DVC's run-cache checks in seconds."""

import hashlib
import json
import subprocess
import sys

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from byol_core.metrics import EvalMetrics
from pipelines.assets import byol_encoder, figures, linear_eval, lock_entries, onnx_encoder, prepared_dataset
from pipelines.resources import DvcProject, tethered

CHECK_TIMEOUT = 1800  # seconds for one `byol check` (a few hundred test images)
SUBJECT = "measured outputs"  # metadata: a digest of the published outputs, params and code measured
MEASURED_IN = "measured in run"  # metadata of a result taken from an earlier evaluation of the same


def _measure(dvc: DvcProject, what: str) -> dict:
    """``byol check WHAT`` in the project: torch and onnxruntime run in a process of the
    project's own (its checkout's code), not in Dagster's; returns its figures."""
    command = [sys.executable, "-m", "byol_core.cli", "check", what, "--params", "params.yaml"]
    try:
        done = subprocess.run(tethered(command), cwd=dvc.root, capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise dg.Failure(description=f"`byol check {what}` took more than {CHECK_TIMEOUT}s", allow_retries=True) from None
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()]
        raise dg.Failure(description=said[-1] if said else f"`byol check {what}` exited {done.returncode}",
                         allow_retries=False)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _bring(context: dg.AssetCheckExecutionContext, dvc: DvcProject, *assets: dg.AssetsDefinition) -> None:
    """The outputs of ``assets`` in this checkout (pulled from the shared remote, if any)."""
    if dvc.remote:
        dvc.fetch(lock_entries(context.instance, [asset.key for asset in assets]))


def _subject(context: dg.AssetCheckExecutionContext, dvc: DvcProject, *assets: dg.AssetsDefinition) -> str | None:
    """With a shared remote: a digest of what this check measures, the published outputs of
    ``assets`` (their md5s, as the runs that made them recorded), params.yaml and the code of
    the checks; None without a remote (the check then reads this checkout's own files, which
    may differ from anything recorded: it always measures)."""
    if not dvc.remote:
        return None
    entries = lock_entries(context.instance, [asset.key for asset in assets])
    if len(entries) < len(assets):
        return None
    digest = hashlib.sha256(json.dumps({stage: sorted((out["path"], out.get("md5")) for out in entry.get("outs", []))
                                        for stage, entry in sorted(entries.items())}).encode())
    for path in [dvc.root / "params.yaml", dvc.root / "pipelines" / "checks.py",
                 *sorted((dvc.root / "byol_core").rglob("*.py"))]:
        name = path.relative_to(dvc.root).as_posix().encode()
        digest.update(name + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()[:16]


def _measured_before(context: dg.AssetCheckExecutionContext, subject: str | None) -> dg.AssetCheckResult | None:
    """The result of this check's latest evaluation of the same ``subject``, if it had one:
    the same published bytes, params and code give the same figures, so a run that restored
    its stages from DVC's run-cache does not measure them again on every worker."""
    if subject is None:
        return None
    key = next(iter(context.selected_asset_check_keys))
    done = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
    for record in context.instance.event_log_storage.get_asset_check_execution_history(key, limit=5, status=done):
        evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event \
            else None
        metadata = getattr(evaluation, "metadata", None) or {}
        if metadata.get(SUBJECT) is not None and metadata[SUBJECT].value == subject:
            context.log.info(f"{key.name}: the same outputs, params and code as its evaluation in run "
                             f"{record.run_id}: its figures are taken, not measured again")
            return dg.AssetCheckResult(passed=evaluation.passed, description=evaluation.description,
                                       metadata={**metadata, MEASURED_IN: dg.MetadataValue.text(record.run_id)})
    return None


def _result(subject: str | None, passed: bool, description: str | None, metadata: dict) -> dg.AssetCheckResult:
    if subject is not None:
        metadata = {**metadata, SUBJECT: dg.MetadataValue.text(subject)}
    return dg.AssetCheckResult(passed=passed, description=description, metadata=metadata)


@dg.asset_check(asset=byol_encoder, blocking=True, automation_condition=dg.AutomationCondition.eager(),
                description="The encoder has not collapsed: its features of test images still spread out.")
def encoder_not_collapsed(context: dg.AssetCheckExecutionContext, dvc: DvcProject) -> dg.AssetCheckResult:
    subject = _subject(context, dvc, prepared_dataset, byol_encoder)
    earlier = _measured_before(context, subject)
    if earlier is not None:
        return earlier
    _bring(context, dvc, prepared_dataset, byol_encoder)
    params = dvc.params()
    floor = params.checks.min_feature_spread
    found = _measure(dvc, "collapse")
    passed = found["feature_spread"] >= floor
    return _result(
        subject, passed,
        None if passed else (
            f"collapsed encoder: feature spread {found['feature_spread']:.4f} < {floor} on "
            f"{found['n_images']} test images (0 means every image gets the same features)"),
        {"feature spread": round(found["feature_spread"], 4), "threshold": floor, "images": found["n_images"]})


@dg.asset_check(asset=linear_eval, blocking=True, automation_condition=dg.AutomationCondition.eager(),
                description="The linear probe on BYOL features beats the same probe on a random-init encoder.")
def probe_beats_random_init(context: dg.AssetCheckExecutionContext, dvc: DvcProject) -> dg.AssetCheckResult:
    subject = _subject(context, dvc, linear_eval)
    earlier = _measured_before(context, subject)
    if earlier is not None:
        return earlier
    _bring(context, dvc, linear_eval)
    params = dvc.params()
    found = figures(EvalMetrics, params.paths.eval_metrics, "evaluate")
    margin = found.linear_top1 - found.random_init_linear_top1
    wanted = params.checks.min_probe_margin
    passed = margin >= wanted
    return _result(
        subject, passed,
        None if passed else (
            f"probe top-1 {found.linear_top1:.4f} beats the random-init encoder's "
            f"{found.random_init_linear_top1:.4f} by {margin:+.4f}, less than the {wanted} required"),
        {"linear top-1": round(found.linear_top1, 4), "random-init top-1": round(found.random_init_linear_top1, 4),
         "margin": round(margin, 4), "required margin": wanted})


@dg.asset_check(asset=onnx_encoder, blocking=True, automation_condition=dg.AutomationCondition.eager(),
                description="onnxruntime on the shipped ONNX file matches the PyTorch encoder on test images.")
def onnx_matches_pytorch(context: dg.AssetCheckExecutionContext, dvc: DvcProject) -> dg.AssetCheckResult:
    subject = _subject(context, dvc, prepared_dataset, byol_encoder, onnx_encoder)
    earlier = _measured_before(context, subject)
    if earlier is not None:
        return earlier
    _bring(context, dvc, prepared_dataset, byol_encoder, onnx_encoder)
    tol = dvc.params().export
    found = _measure(dvc, "parity")
    passed = bool(found["parity_ok"])
    return _result(
        subject, passed,
        None if passed else (
            f"ONNX and PyTorch disagree: max abs diff {found['max_abs_diff']:.3g} beyond atol={tol.atol}, "
            f"rtol={tol.rtol} on {found['n_images']} test images ({found['provider']})"),
        {"max abs diff": float(f"{found['max_abs_diff']:.3g}"), "atol": tol.atol, "rtol": tol.rtol,
         "provider": found["provider"], "images": found["n_images"]})


CHECKS = [encoder_not_collapsed, probe_beats_random_init, onnx_matches_pytorch]
