"""The Kubernetes deployment (deploy/k8s/), checked without a cluster: the pretrain step's pod
tag and the Helm values go through dagster-k8s's and Dagster's own config machinery, up to
the Kubernetes Job that the step executor would create.

The chart turns its values into Dagster configuration with Go templates; ``instance_yaml``
and ``code_location_context`` below do the same for the keys these values use, after the
chart's templates/helpers/instance/_run-launcher.tpl, _postgresql.tpl, _concurrency.tpl and
the user-deployments chart's k8sContainerContext helper (chart 1.13). The keys the chart
accepts are those of its pydantic schema (helm/dagster/schema, chart 1.13), transcribed in
CHART_KEYS: a key it does not know is reported here rather than dropped there.

Not checked here: the chart's values.schema.json as a whole and its templates themselves
(no helm binary nor chart offline), the bundled PostgreSQL subchart's own keys
(``existingSecret``), Kubernetes quantities ("4Gi") beyond being strings, and the image build
(no Docker daemon): the Dockerfile is read for the facts the rest relies on.
"""

from __future__ import annotations

import copy
import importlib
import json
import re

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster._cli.api import grpc_command
from dagster._config import process_config, validate_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.execution.api import create_execution_plan
from dagster._core.instance.config import dagster_instance_config
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from dagster_postgres import PostgresRunStorage
from sqlalchemy import create_engine

from conftest import DEFAULT_PARAMS, ROOT
from pipelines import k8s
from pipelines.assets import ASSETS, byol_encoder

DEPLOY = ROOT / "deploy" / "k8s"
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
RELEASE, NAMESPACE = "byol", "byol"  # what README's `helm upgrade --install` names
FULLNAME = f"{RELEASE}-dagster"  # the chart's "dagster.fullname" for that release
DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome default

# The keys the chart's schema knows (helm/dagster/schema/schema/charts, chart 1.13), at the
# levels these values touch. `existingSecret` belongs to the PostgreSQL subchart.
CHART_KEYS = {
    (): {"dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
         "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
         "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
         "telemetry", "serviceAccount", "global", "retention", "concurrency", "additionalInstanceConfig"},
    ("global",): {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
    ("postgresql",): {"postgresqlScheme", "image", "enabled", "postgresqlHost", "postgresqlUsername",
                      "postgresqlPassword", "postgresqlDatabase", "postgresqlParams", "service", "existingSecret"},
    ("dagster-user-deployments",): {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    ("dagster-user-deployments", "deployments", "*"): {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
        "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector",
        "affinity", "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
        "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName",
        "initContainers", "sidecarContainers"},
    ("dagster-user-deployments", "deployments", "*", "image"): {"repository", "tag", "pullPolicy"},
    ("runLauncher",): {"type", "config"},
    ("runLauncher", "config"): {"celeryK8sRunLauncher", "k8sRunLauncher", "customRunLauncher"},
    ("runLauncher", "config", "k8sRunLauncher"): {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig"},
    ("concurrency",): {"enabled", "pools", "runs"},
    ("concurrency", "pools"): {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    ("telemetry",): {"enabled"},
}
# The chart's defaults for what its templates read and these values leave out.
CHART_DEFAULTS = {"postgresql": {"postgresqlHost": "", "postgresqlParams": {}, "service": {"port": 5432}}}


def _unknown_keys(values: dict) -> list[str]:
    """Keys the chart's schema does not know, as dotted paths."""
    found = []

    def walk(node, path: tuple):
        if isinstance(node, list):
            for item in node:
                walk(item, (*path, "*"))
        elif isinstance(node, dict) and path in CHART_KEYS:
            for key, value in node.items():
                if key not in CHART_KEYS[path]:
                    found.append(".".join([*path, key]))
                walk(value, (*path, key))

    walk(values, ())
    return found


def _launcher_values(values: dict) -> dict:
    return values["runLauncher"]["config"]["k8sRunLauncher"]


def instance_yaml(values: dict) -> dict:
    """The instance's dagster.yaml that the chart's ConfigMap holds, for the parts these values set."""
    launcher = _launcher_values(values)
    run_k8s = launcher.get("runK8sConfig", {})
    launcher_config = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        **({"kubeconfig_file": launcher["kubeconfigFile"]} if launcher.get("kubeconfigFile") else {}),
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": FULLNAME,
        "dagster_home": DAGSTER_HOME,
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        **({"env_config_maps": [m["name"] for m in launcher["envConfigMaps"] if "name" in m]}
           if launcher.get("envConfigMaps") else {}),
        **({"env_secrets": [s["name"] for s in launcher["envSecrets"] if "name" in s]}
           if launcher.get("envSecrets") else {}),
        **{snake: launcher[camel] for camel, snake in [
            ("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
            ("resources", "resources"), ("schedulerName", "scheduler_name"),
            ("securityContext", "security_context")] if launcher.get(camel)},
        **({"fail_pod_on_run_failure": True} if launcher.get("failPodOnRunFailure") else {}),
        **({"run_k8s_config": {snake: run_k8s[camel] for camel, snake in [
            ("containerConfig", "container_config"), ("podSpecConfig", "pod_spec_config"),
            ("podTemplateSpecMetadata", "pod_template_spec_metadata"), ("jobSpecConfig", "job_spec_config"),
            ("jobMetadata", "job_metadata")] if run_k8s.get(camel)}} if run_k8s else {}),
    }
    postgresql = {**CHART_DEFAULTS["postgresql"], **values["postgresql"]}
    postgres = {"postgres_db": {
        "username": postgresql["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": postgresql["postgresqlHost"] or f"{RELEASE}-postgresql",
        "db_name": postgresql["postgresqlDatabase"], "port": postgresql["service"]["port"],
        "params": postgresql["postgresqlParams"],
        **({"scheme": postgresql["postgresqlScheme"]} if postgresql.get("postgresqlScheme") else {})}}
    pools = values.get("concurrency", {}).get("pools", {})
    instance = {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher_config},
        **{kind: {"module": f"dagster_postgres.{module}", "class": cls, "config": postgres} for kind, module, cls in [
            ("run_storage", "run_storage", "PostgresRunStorage"), ("event_log_storage", "event_log",
             "PostgresEventLogStorage"), ("schedule_storage", "schedule_storage", "PostgresScheduleStorage")]},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }
    if values.get("concurrency", {}).get("enabled"):
        instance["concurrency"] = {"pools": {snake: pools[camel] for camel, snake in [
            ("defaultLimit", "default_limit"), ("granularity", "granularity"),
            ("opGranularityRunBuffer", "op_granularity_run_buffer")] if camel in pools}}
    return instance


def code_location_context(values: dict) -> dict:
    """The container context the chart hands the code server (DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT),
    which runs and their steps inherit."""
    [deployment] = values["dagster-user-deployments"]["deployments"]
    context = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{FULLNAME}-{deployment['name']}-user-env",
                            *(m["name"] for m in deployment.get("envConfigMaps", []) if "name" in m)],
        **({"env_secrets": [s["name"] for s in deployment["envSecrets"] if "name" in s]}
           if deployment.get("envSecrets") else {}),
        **{snake: deployment[camel] for camel, snake in [
            ("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
            ("resources", "resources"), ("schedulerName", "scheduler_name")] if deployment.get(camel)},
        "namespace": NAMESPACE,
        "service_account_name": f"{FULLNAME}-user-deployments",
        **({"env": deployment["env"]} if isinstance(deployment.get("env"), list) else {}),
    }
    return {"k8s": context}


def problems(values: dict) -> list[str]:
    """What is wrong with ``values``: keys the chart does not know, and instance or code
    location configuration that Dagster or dagster-k8s rejects."""
    found = [f"the chart knows no key {key}" for key in _unknown_keys(values)]
    if values["runLauncher"]["type"] != "K8sRunLauncher":
        return [*found, f"runLauncher.type is {values['runLauncher']['type']!r}, not K8sRunLauncher"]
    instance = instance_yaml(values)
    for name, schema in [("run_launcher", K8sRunLauncher.config_type()),
                         ("run_storage", PostgresRunStorage.config_type())]:
        result = validate_config(schema, instance[name]["config"])  # environment variables stay unread
        found += [f"{name}: {error.message}" for error in result.errors or []]
    try:
        K8sContainerContext.create_from_config(code_location_context(values))
    except DagsterInvalidConfigError as error:
        found += [f"code location container context: {e.message}" for e in error.errors]
    return found


def _launcher(tmp_path, values: dict) -> K8sRunLauncher:
    """The run launcher the instance would build, pointed at a kubeconfig that no cluster
    answers (nothing here connects)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "offline",
        "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "offline", "user": {}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}]}))
    config = process_config(K8sRunLauncher.config_type(), instance_yaml(values)["run_launcher"]["config"]).value
    return K8sRunLauncher(**{**config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})


def step_tags(step: str) -> dict:
    """The tags the step executor reads for ``step`` of the retrain job."""
    from pipelines.definitions import defs

    return create_execution_plan(defs.resolve_job_def("retrain")).get_step_by_key(step).tags


def step_job(tmp_path, step: str, values: dict = VALUES) -> kubernetes.client.V1Job:
    """The Kubernetes Job k8s_job_executor would create for ``step``: the run launcher's
    config, then the code location's, then the step's tag, merged as its step handler does
    (the run gives the executor no config of its own)."""
    launcher = _launcher(tmp_path, values)
    image = "registry.example.com/byol-pipeline:test"
    origin = JobPythonOrigin("retrain", RepositoryPythonOrigin(
        f"{k8s.IMAGE_PROJECT_DIR}/.venv/bin/python", ModuleCodePointer("pipelines.definitions", "defs", None), image,
        container_context=code_location_context(values)))
    run = dg.DagsterRun(job_name="retrain", job_code_origin=origin)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags(step))))
    return construct_dagster_k8s_job(
        context.get_k8s_job_config(image, launcher), ["dagster", "api", "execute_step"], f"dagster-step-{step}",
        user_defined_k8s_config=context.run_k8s_config, component="step_worker")


# The values


def test_the_values_use_only_keys_the_chart_knows_and_dagster_accepts_what_they_render_to():
    assert problems(VALUES) == []


def test_the_rendered_instance_loads_with_dagsters_own_instance_schema(tmp_path):
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml(VALUES)))
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["concurrency"]["pools"]["default_limit"] == 1  # the "dvc" pool, as under `make serve`
    assert {asset.op.pool for asset in ASSETS} == {"dvc"}


def test_the_storage_scheme_names_a_driver_this_environment_has():
    postgres = instance_yaml(VALUES)["run_storage"]["config"]["postgres_db"]
    engine = create_engine(f"{postgres['scheme']}://u:p@localhost/{postgres['db_name']}")  # loads the driver, connects to nothing
    assert engine.dialect.driver == "psycopg2"


@pytest.mark.parametrize("edit, message", [
    (lambda v: _launcher_values(v).update(envSecret=[{"name": "x"}]), "runLauncher.config.k8sRunLauncher.envSecret"),
    (lambda v: v["postgresql"].update(postgresqlPasword="x"), "postgresql.postgresqlPasword"),
    (lambda v: v["dagster-user-deployments"]["deployments"][0].update(dagsterApiGrpcArg=[]), "dagsterApiGrpcArg"),
    (lambda v: _launcher_values(v).update(loadInclusterConfig="yes"), "root:load_incluster_config. Value \"yes\""),
    (lambda v: _launcher_values(v).update(runK8sConfig={"containerConfig": "gpu"}),
     "root:run_k8s_config:container_config must be dict"),
    (lambda v: v["postgresql"].update(service={"port": "five"}), "root:postgres_db:port. Value \"five\""),
    (lambda v: v["dagster-user-deployments"]["deployments"][0].update(volumes={"name": "x"}),
     "code location container context: Value at path root:volumes must be list"),
])
def test_a_wrong_key_or_a_wrong_type_in_the_values_is_reported(edit, message):
    values = copy.deepcopy(VALUES)
    edit(values)
    found = problems(values)
    assert any(message in problem for problem in found), found


def test_the_code_server_serves_the_projects_code_location():
    [deployment] = VALUES["dagster-user-deployments"]["deployments"]
    # The chart's container arguments, parsed by Dagster's own command line.
    args = ["-h", "0.0.0.0", "-p", str(deployment["port"]), *deployment["dagsterApiGrpcArgs"]]
    params = grpc_command.make_context("grpc", args).params  # an unknown option raises here
    assert params["module_name"] == "pipelines.definitions"
    assert isinstance(importlib.import_module(params["module_name"]).defs, dg.Definitions)
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env[k8s.EXECUTOR_VARIABLE] == "k8s" and deployment["includeConfigInLaunchedRuns"]["enabled"]


def test_no_credential_is_written_in_what_is_deployed():
    assert "postgresqlPassword" not in VALUES["postgresql"] and VALUES["generatePostgresqlPasswordSecret"] is False
    for name in ["values.yaml", "pretrain-state.yaml", "Dockerfile"]:
        text = (DEPLOY / name).read_text()
        assert not re.search(r"(?i)(password|secret_access_key|token)\s*[:=]\s*\S", text), f"a credential in {name}"


# The executor and the pretrain step's pod


def test_the_executor_is_in_process_by_default_and_k8s_when_the_deployment_says_so(monkeypatch):
    monkeypatch.delenv(k8s.EXECUTOR_VARIABLE, raising=False)
    assert k8s.executor() is dg.in_process_executor
    assert k8s.executor("k8s") is k8s_job_executor
    assert process_config(k8s_job_executor.config_schema.config_type, {}).success  # no run config needed
    with pytest.raises(dg.DagsterInvariantViolationError, match="one of in_process, k8s, celery"):
        k8s.executor("ray")


def test_the_pretrain_step_pod_gets_one_gpu_its_toleration_and_the_resume_volume(tmp_path):
    job = step_job(tmp_path, "byol_encoder")
    pod = job.spec.template.spec
    [container] = pod.containers
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert container.resources.requests == {"cpu": "2", "memory": "4Gi"}  # the tag's, over the launcher's default
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    [volume] = [v for v in pod.volumes if v.name == "resume"]
    assert volume.persistent_volume_claim.claim_name == k8s.RESUME_CLAIM
    assert {m.mount_path for m in container.volume_mounts if m.name == "resume"} == {
        f"{k8s.IMAGE_PROJECT_DIR}/{DEFAULT_PARAMS['paths']['resume']}"}
    # The DVC remote's credentials and the code location's environment reach the step.
    assert "byol-dvc-remote" in {e.secret_ref.name for e in container.env_from if e.secret_ref}
    assert {(e.name, e.value) for e in container.env} >= {(k8s.EXECUTOR_VARIABLE, "k8s")}


@pytest.mark.parametrize("step", ["prepared_dataset", "linear_eval", "onnx_encoder", "image_embeddings"])
def test_the_other_steps_ask_for_cpu_and_memory_only(tmp_path, step):
    pod = step_job(tmp_path, step).spec.template.spec
    [container] = pod.containers
    assert container.resources.limits is None
    assert container.resources.requests == _launcher_values(VALUES)["resources"]["requests"]
    assert not pod.tolerations and not any(v.name == "resume" for v in pod.volumes or [])


def test_only_the_pretrain_asset_carries_a_pod_tag():
    tagged = {asset.key.to_user_string() for asset in ASSETS if k8s.K8S_CONFIG_TAG in asset.op.tags}
    assert tagged == {"byol_encoder"}
    assert json.loads(byol_encoder.op.tags[k8s.K8S_CONFIG_TAG]) == k8s.PRETRAIN_POD[k8s.K8S_CONFIG_TAG]


@pytest.mark.parametrize("tag, message", [
    ({"container_confg": {}}, "container_confg"),  # a key dagster-k8s does not know
    ({"container_config": {"resource": {}}}, "Unexpected keys in model class V1Container"),  # nor Kubernetes
    ({"container_config": {"resources": "1 gpu"}}, "must be a dict"),  # a wrong type
    ({"pod_spec_config": {"tolerations": {"key": "nvidia.com/gpu"}}}, "must be a dict"),  # a dict for a list
])
def test_a_wrong_key_or_a_wrong_type_in_the_pod_tag_is_rejected(tag, message):
    with pytest.raises(Exception, match=message):
        get_user_defined_k8s_config({k8s.K8S_CONFIG_TAG: json.dumps(tag)})


# The image and the claim


def _instructions(dockerfile: str) -> dict[str, list[str]]:
    """Each instruction of a Dockerfile -> its arguments, in order (continued lines joined)."""
    found: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def test_the_dockerfile_builds_what_the_pods_expect():
    text = (DEPLOY / "Dockerfile").read_text()
    first = {word: args[0] for word, args in _instructions(text).items()}
    assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?", first["FROM"])
    assert first["WORKDIR"] == k8s.IMAGE_PROJECT_DIR  # where the resume volume is mounted
    assert "ENTRYPOINT" not in first and "CMD" not in first  # the chart and dagster-k8s pass whole commands
    assert "BYOL_SETUP_POSTGRESQL=no scripts/setup.sh" in text  # installed as `make setup` installs it
    assert f"PATH={k8s.IMAGE_PROJECT_DIR}/.venv/bin:" in text  # dagster, byol and dvc as commands
    assert "core.no_scm true" in text  # a checkout without .git: DVC needs no SCM


def test_the_resume_claim_is_a_valid_claim_of_the_name_the_pod_mounts():
    manifest = yaml.safe_load((DEPLOY / "pretrain-state.yaml").read_text())
    claim = k8s_model_from_dict(kubernetes.client.V1PersistentVolumeClaim,
                                k8s_snake_case_dict(kubernetes.client.V1PersistentVolumeClaim, manifest))
    assert claim.kind == "PersistentVolumeClaim" and claim.metadata.name == k8s.RESUME_CLAIM
    assert claim.spec.access_modes == ["ReadWriteOnce"]
