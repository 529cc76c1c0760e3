"""The orchestrator of tests/test_distributed.py: runs the retrain job in this process with the
executor that BYOL_EXECUTOR names (celery there), on the instance in DAGSTER_HOME, and prints
one JSON line: the run's id and whether it succeeded.

    python orchestrate.py run [ASSET ...]   the retrain job (only those assets, if named)
    python orchestrate.py retry RUN_ID      re-execute that run from failure (the UI's button)
"""

import json
import sys

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository


def main(argv: list[str]) -> int:
    job = ReconstructableRepository.for_module("pipelines.definitions", "defs").get_reconstructable_job("retrain")
    with dg.DagsterInstance.get() as instance:
        if argv[0] == "retry":
            result = dg.execute_job(job, instance, reexecution_options=dg.ReexecutionOptions.from_failure(argv[1], instance))
        else:
            selection = [dg.AssetKey(name) for name in argv[1:]] or None
            result = dg.execute_job(job, instance, asset_selection=selection)
        print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
