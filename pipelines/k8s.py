"""How the steps run on Kubernetes (deploy/k8s/): the executor, and the pretrain step's pod.

On one machine a run is one process (the in-process executor); ``BYOL_EXECUTOR=celery`` sends
the steps to Celery workers instead (pipelines/workers.py). Deployed with Dagster's Helm
chart and deploy/k8s/values.yaml, ``BYOL_EXECUTOR=k8s`` makes every step a Kubernetes Job
of its own (dagster-k8s's ``k8s_job_executor``), so that pretraining alone holds a GPU: the
``dagster-k8s/config`` op tag below reaches the pretrain step's pod and no other. The
other steps get the CPU and memory requests that the Helm values give every run pod.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_VARIABLE = "BYOL_EXECUTOR"
EXECUTORS = ("in_process", "k8s", "celery")

# Where the project lies inside the image: deploy/k8s/Dockerfile's WORKDIR.
IMAGE_PROJECT_DIR = "/opt/byol"
# params.yaml's paths.resume (tests/test_k8s.py holds them equal): pretraining's crash-resume
# state, which is no DVC output.
RESUME_DIR = ".byol/resume"
# A PersistentVolumeClaim (deploy/k8s/pretrain-state.yaml) mounted on the resume folder, so
# that a retry in a new pod, on any node, resumes from the last checkpoint instead of epoch 0.
RESUME_CLAIM = "byol-pretrain-state"
K8S_CONFIG_TAG = "dagster-k8s/config"

PRETRAIN_POD = {K8S_CONFIG_TAG: {
    "container_config": {
        "resources": {
            # A GPU is an extended resource: asked for in limits (the request equals it).
            "limits": {"nvidia.com/gpu": 1},
            # A floor for the scheduler, not a cap: the process, the CUDA context and the pinned
            # buffers that stream data too large to stay on the GPU (a streamed pretrain on CPU
            # peaked at 1.3 GB RSS on a million images).
            "requests": {"cpu": "2", "memory": "4Gi"},
        },
        "volume_mounts": [{"name": "resume", "mount_path": f"{IMAGE_PROJECT_DIR}/{RESUME_DIR}"}],
    },
    "pod_spec_config": {
        # GPU node pools are usually tainted so that only pods that need a GPU land on them.
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "resume", "persistent_volume_claim": {"claim_name": RESUME_CLAIM}}],
    },
}}


def executor(name: str | None = None) -> dg.ExecutorDefinition:
    """The executor that ``name`` (else $BYOL_EXECUTOR, else "in_process") names."""
    name = name or os.environ.get(EXECUTOR_VARIABLE) or "in_process"
    if name == "in_process":
        # One process per run, not one per step: the steps take turns in the "dvc" pool
        # anyway, and a fresh process per step would re-import torch for each of the seven.
        return dg.in_process_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor  # imported only here: it loads the kubernetes client

        return k8s_job_executor
    if name == "celery":
        from pipelines import workers  # imported only here: it loads celery

        return workers.executor()
    raise dg.DagsterInvariantViolationError(
        f"{EXECUTOR_VARIABLE}={name!r} is not an executor of this project: set it to one of {', '.join(EXECUTORS)} "
        "(k8s only inside the Kubernetes deployment, deploy/k8s/README.md; celery with a broker and workers, "
        "docs/machines.md)")
