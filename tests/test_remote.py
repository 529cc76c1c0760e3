"""Stages on two machines that share nothing but a DVC remote over SSH: two clones of the
project, an sshd of the test's own on loopback (a key made here, a port above 1024), and one
Dagster instance (in a deployment, PostgreSQL). Ingest runs on machine A; pretrain runs on
machine B, which has no raw files: it takes ingest's dvc.lock entry from the Dagster run and
pulls the prepared data; then machine A asks for pretrain with the same inputs and DVC
restores it from the run-cache B pushed, bit for bit, instead of training again."""

import hashlib
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from conftest import SOURCE, TINY_DVC, dvc, git, make_fashion_files, make_project
from helpers.services import sshd
from pipelines.assets import byol_encoder, prepared_dataset
from pipelines.resources import LOCK_ENTRY, RESTORED, RESTORED_FROM, DvcProject

@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """An sshd on 127.0.0.1 that accepts one key made here; yields (url, key file, store folder)."""
    with sshd(tmp_path_factory.mktemp("ssh")) as found:
        yield found


def machine(root: Path, url: str, key: Path) -> DvcProject:
    """A checkout that knows the remote as `store`, its URL and key in config.local (never committed)."""
    dvc(root, "remote", "add", "--local", "store", url)
    dvc(root, "remote", "modify", "--local", "store", "keyfile", str(key))
    return DvcProject(project_dir=str(root), remote="store")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def materialize(asset, project: DvcProject, instance) -> dict:
    result = dg.materialize([asset], resources={"dvc": project}, instance=instance)
    assert result.success
    [event] = result.get_asset_materialization_events()
    return event.step_materialization_data.materialization.metadata


def two_machines(tmp_path: Path) -> tuple[Path, Path]:
    """Machine A: the project in a git repository, with the raw files; machine B: a clone of
    it, without them."""
    a_root = make_project(tmp_path / "a", TINY_DVC)
    git(a_root, "add", "-A")
    git(a_root, "commit", "-qm", "project")
    b_root = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(a_root), str(b_root)], check=True)
    return a_root, b_root


def test_a_stage_runs_on_another_machine_and_a_third_run_is_restored_from_the_run_cache(tmp_path, remote):
    url, key, store = remote
    a_root, b_root = two_machines(tmp_path)
    assert not (b_root / SOURCE).exists()  # machine B never sees the raw files
    a, b = machine(a_root, url, key), machine(b_root, url, key)
    instance = dg.DagsterInstance.ephemeral()  # the deployment's one instance, which both machines report to

    ingested = materialize(prepared_dataset, a, instance)
    assert ingested["dvc stage"].value == "ran" and ingested["dvc pushed files"].value > 0
    assert ingested[LOCK_ENTRY].value["stage"] == "ingest"

    trained = materialize(byol_encoder, b, instance)
    assert trained["dvc stage"].value == "ran"  # trained on B, from the prepared data it pulled
    assert trained["dvc pushed files"].value >= 2
    assert md5(b_root / "data" / "prepared" / "card.json") == md5(a_root / "data" / "prepared" / "card.json")

    # A asks for pretrain with B's inputs: the instance holds B's dvc.lock entry, so A adopts it
    # and pulls B's outputs, without moving DVC's run-cache, and has nothing to push.
    restored = materialize(byol_encoder, a, instance)
    assert restored["dvc stage"].value == RESTORED, restored["dvc stage"].value
    assert restored[RESTORED_FROM].value.startswith("run ") and restored["dvc pushed files"].value == 0
    for name in ("encoder.pt", "checkpoint.pt"):
        assert md5(a_root / "models" / name) == md5(b_root / "models" / name)
    assert dvc(a_root, "status", "pretrain").stdout.strip().endswith("up to date.")
    # Nothing but the remote was shared: no credential or URL entered a committed file.
    assert "store" not in (a_root / ".dvc" / "config").read_text()
    assert any((store / "runs").rglob("*"))  # the run-cache entries travelled through the remote

    # A third machine whose Dagster instance has no record of pretrain (runs made outside this
    # instance, by `dvc repro` and `dvc push --run-cache`): DVC's own run-cache restores it.
    subprocess.run(["git", "clone", "-q", str(a_root), str(tmp_path / "c")], check=True)
    c_root = tmp_path / "c"
    other = dg.DagsterInstance.ephemeral()
    assert materialize(prepared_dataset, a, other)["dvc stage"].value != "ran"  # A's data, recorded in `other`
    from_cache = materialize(byol_encoder, machine(c_root, url, key), other)
    assert from_cache["dvc stage"].value == RESTORED and from_cache[RESTORED_FROM].value == "DVC's run-cache"
    assert md5(c_root / "models" / "encoder.pt") == md5(b_root / "models" / "encoder.pt")
    for name, meta in (("ingest on A", ingested), ("pretrain on B", trained), ("pretrain on A", restored),
                       ("pretrain on C", from_cache)):
        pushed = meta["dvc pushed files"].value
        took = f" in {meta['dvc push seconds'].value}s" if pushed else ""
        print(f"{name}: {meta['dvc stage'].value.split(':')[0]}, pushed {pushed} files{took}")


def test_a_worker_that_kept_an_earlier_runs_files_takes_this_runs_inputs(tmp_path, remote):
    """Workers live on. B still holds the prepared data it trained on when A ingests new files;
    DVC pulls only the inputs that are missing, so B's next pretraining would use the old data
    in place unless it goes. It must train on A's new data; and when the first files come back,
    B restores its first encoder instead of training again, though its own files are newer."""
    url, key, _ = remote
    a_root, b_root = two_machines(tmp_path)
    a, b = machine(a_root, url, key), machine(b_root, url, key)
    instance = dg.DagsterInstance.ephemeral()
    make_fashion_files(a_root / SOURCE, n_train=260, n_test=130, seed=8)  # files no other test pushed a run of
    first_files = shutil.copytree(a_root / SOURCE, tmp_path / "first-files")

    def prepared_md5(made: dict) -> str:
        return next(out["md5"] for out in made[LOCK_ENTRY].value["entry"]["outs"] if out["path"] == "data/prepared")

    def trained_on(made: dict) -> str:
        return next(dep["md5"] for dep in made[LOCK_ENTRY].value["entry"]["deps"] if dep["path"] == "data/prepared")

    first_data = materialize(prepared_dataset, a, instance)
    first = materialize(byol_encoder, b, instance)
    assert first["dvc stage"].value == "ran" and trained_on(first) == prepared_md5(first_data)
    first_encoder = md5(b_root / "models" / "encoder.pt")

    make_fashion_files(a_root / SOURCE, n_train=300, n_test=150, seed=9)  # other files, in place
    second_data = materialize(prepared_dataset, a, instance)
    assert second_data["dvc stage"].value == "ran" and prepared_md5(second_data) != prepared_md5(first_data)
    second = materialize(byol_encoder, b, instance)
    assert second["dvc stage"].value == "ran"
    assert trained_on(second) == prepared_md5(second_data)  # not the prepared data B held
    assert md5(b_root / "data" / "prepared" / "card.json") == md5(a_root / "data" / "prepared" / "card.json")

    shutil.rmtree(a_root / SOURCE)
    shutil.copytree(first_files, a_root / SOURCE)
    again = materialize(prepared_dataset, a, instance)
    assert again["dvc stage"].value == RESTORED and prepared_md5(again) == prepared_md5(first_data)
    restored = materialize(byol_encoder, b, instance)
    assert restored["dvc stage"].value == RESTORED and restored[RESTORED_FROM].value.startswith("run ")
    assert md5(b_root / "models" / "encoder.pt") == first_encoder
    assert trained_on(restored) == prepared_md5(first_data)
