"""Code snapshots: a submission's jobs run the code of the moment it was submitted, whatever happens
to the working tree while they wait; result.json and --status say which code ran."""
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from harness.files import CODE_INFO
from harness.sweep import snapshot
from support import ROOT, write_grid
from support.repo_copy import MARKER, edit, repo_copy, run_copy


def test_a_snapshot_is_taken_once_per_content_and_is_read_only(tmp_path):
    first = snapshot.take(tmp_path / "runs")
    again = snapshot.take(tmp_path / "runs")
    assert first == again == snapshot.planned(tmp_path / "runs")
    assert first.path == (tmp_path / "runs" / ".code" / first.hash).resolve()
    info = json.loads((first.path / CODE_INFO).read_text())
    assert info["hash"] == first.hash and "git_commit" in info
    assert (first.path / "harness" / "sweep" / "job.py").read_bytes() == (ROOT / "harness/sweep/job.py").read_bytes()
    assert (first.path / "datasets" / "cifar10.yaml").is_file()
    assert not stat.S_IMODE((first.path / "harness" / "__init__.py").stat().st_mode) & 0o222
    assert not list(first.path.rglob("__pycache__"))
    env = first.environment()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(first.path) and env["PYTHONSAFEPATH"] == "1"
    assert f"export PYTHONPATH={first.path}" in first.setup_lines()[0]


def test_an_edit_gives_another_hash(tmp_path):
    repo = repo_copy(tmp_path / "repo")
    code = "from harness.sweep.snapshot import working_tree_hash, PACKAGE; print(working_tree_hash(), PACKAGE)"
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONSAFEPATH": "1"}

    def tree_hash():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        digest, package = out.stdout.split()
        assert package == str(repo / "harness"), out.stderr
        return digest
    before = tree_hash()
    assert before == snapshot.working_tree_hash()  # the same content as this checkout
    edit(repo)
    assert tree_hash() != before


@pytest.mark.slow
def test_local_jobs_run_the_snapshot_taken_at_submission(tmp_path, tiny_card):
    """Two cells one after the other; the working tree changes while the first one trains: the
    second one still runs the code of the submission. The sweep runs from the copy, so jobs that
    imported from their working directory would run the edit."""
    repo = repo_copy(tmp_path / "repo")
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", grid="loss.name: [ce, focal]",
                      extra="launch: {cluster: local, parallel: 1}\n")
    runs = tmp_path / "runs"
    sweep = subprocess.Popen([sys.executable, str(repo / "tools" / "sweep.py"), str(grid), "--runs", str(runs),
                              "log.images=false"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 300
    while not list((runs / "g").glob("*/progress.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    edit(repo)  # the first cell is training, the second one not started yet
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, out
    (taken,) = (runs / ".code").iterdir()
    results = [json.loads(p.read_text()) for p in sorted((runs / "g").glob("*/result.json"))]
    assert len(results) == 2 and all(r["code_snapshot"] == taken.name for r in results)
    assert MARKER not in out and f"code: snapshot {taken.name}, {taken / 'harness'}" in out

    status = run_copy(repo, str(grid), "--runs", str(runs), "log.images=false", "--status")
    assert status.returncode == 0, status.stderr
    assert f"{taken.name}*" in status.stdout and "2 cells run (or ran) a code snapshot other than" in status.stdout
