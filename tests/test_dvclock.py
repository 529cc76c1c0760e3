"""pipelines/dvclock.py: a lock table that a killed dvc left unreadable is replaced, so DVC
works again; never while a dvc process works in the project, never a readable one."""

import json
import subprocess
import sys
import time

from conftest import dvc
from pipelines.dvclock import EMPTY, dvc_processes, heal, table


def test_an_unreadable_lock_table_is_replaced_once_no_dvc_works_in_the_project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    dvc(root, "init", "--no-scm", "-q")
    (root / "dvc.yaml").write_text("stages:\n  touch:\n    cmd: echo x > out.txt\n    outs: [out.txt]\n")
    dvc(root, "repro")
    readable = table(root).read_text()
    assert heal(root) is None and table(root).read_text() == readable  # readable: untouched

    table(root).write_text('{"read": {"out.t')  # cut short, as a dvc killed mid-write leaves it
    broken = dvc(root, "status", ok=False)
    assert broken.returncode != 0 and "RWLock" in broken.stdout + broken.stderr

    # A process named dvc working in the project: it may hold locks the table named.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "dvc"], cwd=root / ".dvc")
    try:
        deadline = time.monotonic() + 10
        while holder.pid not in dvc_processes(root):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert heal(root) is None and table(root).read_text() == '{"read": {"out.t'
    finally:
        holder.kill()
        holder.wait()

    said = heal(root)
    assert said is not None and "unreadable" in said
    assert json.loads(table(root).read_text()) == EMPTY
    assert dvc(root, "status").stdout.strip().endswith("up to date.")  # DVC works again
    table(root).unlink()
    assert heal(root) is None  # absent: DVC makes it


def test_a_stage_runs_again_after_a_killed_dvc_cut_the_lock_table(tmp_path):
    """What a stopped run can leave (dvc killed while writing the table): the next
    materialization runs the stage, saying what it put right, instead of failing for good."""
    import dagster as dg

    from pipelines.resources import DvcProject

    root = tmp_path / "project"
    root.mkdir()
    dvc(root, "init", "--no-scm", "-q")
    (root / "dvc.yaml").write_text("stages:\n  touch:\n    cmd: echo x > out.txt\n    outs: [out.txt]\n")
    (root / "params.yaml").write_text("{}\n")
    table(root).parent.mkdir(parents=True, exist_ok=True)
    table(root).write_text("")

    @dg.asset
    def touch(context: dg.AssetExecutionContext, dvc: DvcProject) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=dvc.repro(context, "touch").metadata())

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([touch], instance=instance, resources={"dvc": DvcProject(project_dir=str(root))})
    assert result.success and (root / "out.txt").read_text().strip() == "x"
    said = [r.user_message for r in instance.all_logs(result.run_id) if r.user_message]
    assert any("lock table" in m and "replaced by an empty one" in m for m in said), said
