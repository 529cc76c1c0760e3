"""Asset checks. All are blocking: a failure stops the assets after it in the same run,
and says why with the numbers. Thresholds come from params.yaml's ``checks`` section.

A check may run on another machine than the stage it checks (a Celery worker of its own):
with a shared DVC remote it first pulls the outputs it reads, as their stages recorded them.
The measurements that need torch or onnxruntime run as `byol check` in a process of their
own, as the stages do: the Dagster process imports neither."""

import json
import subprocess
import sys

import dagster as dg

from byol_core.metrics import EvalMetrics
from pipelines.assets import byol_encoder, figures, linear_eval, lock_entries, onnx_encoder, prepared_dataset
from pipelines.resources import DvcProject, tethered

CHECK_TIMEOUT = 1800  # seconds for one `byol check` (a few hundred test images)


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


@dg.asset_check(asset=byol_encoder, blocking=True, automation_condition=dg.AutomationCondition.eager(),
                description="The encoder has not collapsed: its features of test images still spread out.")
def encoder_not_collapsed(context: dg.AssetCheckExecutionContext, dvc: DvcProject) -> dg.AssetCheckResult:
    _bring(context, dvc, prepared_dataset, byol_encoder)
    params = dvc.params()
    floor = params.checks.min_feature_spread
    found = _measure(dvc, "collapse")
    passed = found["feature_spread"] >= floor
    return dg.AssetCheckResult(
        passed=passed,
        description=None if passed else (
            f"collapsed encoder: feature spread {found['feature_spread']:.4f} < {floor} on "
            f"{found['n_images']} test images (0 means every image gets the same features)"),
        metadata={"feature spread": round(found["feature_spread"], 4), "threshold": floor, "images": found["n_images"]})


@dg.asset_check(asset=linear_eval, blocking=True, automation_condition=dg.AutomationCondition.eager(),
                description="The linear probe on BYOL features beats the same probe on a random-init encoder.")
def probe_beats_random_init(context: dg.AssetCheckExecutionContext, dvc: DvcProject) -> dg.AssetCheckResult:
    _bring(context, dvc, linear_eval)
    params = dvc.params()
    found = figures(EvalMetrics, params.paths.eval_metrics, "evaluate")
    margin = found.linear_top1 - found.random_init_linear_top1
    wanted = params.checks.min_probe_margin
    passed = margin >= wanted
    return dg.AssetCheckResult(
        passed=passed,
        description=None if passed else (
            f"probe top-1 {found.linear_top1:.4f} beats the random-init encoder's "
            f"{found.random_init_linear_top1:.4f} by {margin:+.4f}, less than the {wanted} required"),
        metadata={"linear top-1": round(found.linear_top1, 4),
                  "random-init top-1": round(found.random_init_linear_top1, 4),
                  "margin": round(margin, 4), "required margin": wanted})


@dg.asset_check(asset=onnx_encoder, blocking=True, automation_condition=dg.AutomationCondition.eager(),
                description="onnxruntime on the shipped ONNX file matches the PyTorch encoder on test images.")
def onnx_matches_pytorch(context: dg.AssetCheckExecutionContext, dvc: DvcProject) -> dg.AssetCheckResult:
    _bring(context, dvc, prepared_dataset, byol_encoder, onnx_encoder)
    tol = dvc.params().export
    found = _measure(dvc, "parity")
    passed = bool(found["parity_ok"])
    return dg.AssetCheckResult(
        passed=passed,
        description=None if passed else (
            f"ONNX and PyTorch disagree: max abs diff {found['max_abs_diff']:.3g} beyond atol={tol.atol}, "
            f"rtol={tol.rtol} on {found['n_images']} test images ({found['provider']})"),
        metadata={"max abs diff": float(f"{found['max_abs_diff']:.3g}"), "atol": tol.atol, "rtol": tol.rtol,
                  "provider": found["provider"], "images": found["n_images"]})


CHECKS = [encoder_not_collapsed, probe_beats_random_init, onnx_matches_pytorch]
