"""The pipeline on two work pools: `tuneloop deploy` against a Prefect server, a process worker on
`tuneloop-cpu` and one on `tuneloop-gpu` (both on this machine, so they share the workspace and the DVC
hand-off is a no-op; tests/code/test_stage_handoff.py covers it), one training deployment run with the tiny
model. Checked through the API: the training flow run ran in the CPU pool, its train stage as a subflow run
of `tuneloop-train-stage/train` in the GPU pool, and the champion it promoted, pushed to the shared store (a
Moto S3 server) and pulled into an empty BentoML home as a serving machine would, answers there."""

from __future__ import annotations

import os
import sys

import httpx
import pytest

from tests.integration.conftest import prefect_api, process_group, pull_elsewhere, run_deployment_and_wait, serving
from tests.integration.test_training_flow import _configure
from tuneloop import registry


@pytest.mark.timeout(600)
def test_train_stage_runs_in_the_gpu_pool_and_the_rest_in_the_cpu_pool(
    project, cli, tiny_model, store, prefect_harness, tmp_path, s3
):
    from prefect.settings import PREFECT_API_URL

    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "200").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    _configure(project, tiny_model, ["train.epochs=2"])
    api = str(PREFECT_API_URL.value())  # the session's test server: no second server to start
    deployed = cli("deploy")
    assert deployed.exit_code == 0, deployed.output
    assert "tuneloop-train-stage/train" in deployed.output and "--pool tuneloop-gpu" in deployed.output
    # Workers poll every second (default 10) so the run starts without waiting; PYTHONPATH and the rest pass on.
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = [sys.executable, "-m", "prefect", "worker", "start", "--limit", "1", "--pool"]
    try:
        with open(tmp_path / "cpu.log", "w") as cpu_log, open(tmp_path / "gpu.log", "w") as gpu_log:
            with (
                process_group([*worker, "tuneloop-cpu"], env, str(project), cpu_log),
                process_group([*worker, "tuneloop-gpu"], env, str(project), gpu_log),
            ):
                parent = run_deployment_and_wait(api, "tuneloop-training/training", 500)
        logs = "".join((tmp_path / f"{p}.log").read_text()[-3000:] for p in ("cpu", "gpu"))
        assert parent["state_type"] == "COMPLETED", logs
        assert parent["work_pool_name"] == "tuneloop-cpu"

        children = prefect_api(
            "POST", f"{api}/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [parent["id"]]}}}
        ).json()
        (child,) = children  # the train stage's run, a subflow of the pipeline's train task
        stage = prefect_api("GET", f"{api}/deployments/name/tuneloop-train-stage/train").json()
        assert child["deployment_id"] == stage["id"] and child["state_type"] == "COMPLETED"
        assert child["work_pool_name"] == "tuneloop-gpu" and child["work_queue_name"] == "default"
        tasks = prefect_api(
            "POST", f"{api}/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [parent["id"]]}}}
        ).json()
        by_id = {t["id"]: t for t in tasks}
        link = by_id[child["parent_task_run_id"]]  # the subflow's stand-in task run, inside the train task
        assert by_id[link["task_inputs"]["__parents__"][0]["id"]]["name"].startswith("train-")
        # Every other stage ran in the parent's process (the CPU pool), as its task runs.
        names = {t["name"].rsplit("-", 1)[0] for t in tasks}
        assert {"validate", "prepare", "pretrain", "evaluate", "release", "package"} <= names
        champion = registry.champion()
        assert champion is not None and (project / "models/candidate/model.safetensors").is_file()
        _serve_elsewhere(cli, project, tmp_path, s3, champion.tag)
    finally:
        # The test server outlives this test: a train-stage deployment left there would send the in-process
        # flow tests' train stage to a pool nobody polls.
        for name in ("tuneloop-train-stage/train", "tuneloop-training/training", "tuneloop-monitoring/monitoring"):
            found = prefect_api("GET", f"{api}/deployments/name/{name}")
            if found.status_code == 200:
                prefect_api("DELETE", f"{api}/deployments/{found.json()['id']}")


def _serve_elsewhere(cli, project, tmp_path, s3, tag: str) -> None:
    """Push the champion to the shared store; a serving machine (its own, empty BentoML home) pulls it and serves."""
    pushed = cli("models", "push", *s3.settings())
    assert pushed.exit_code == 0, pushed.output
    home = tmp_path / "serving-machine-bentoml"
    pulled = pull_elsewhere(home, project, *s3.settings())
    assert pulled.returncode == 0 and f"pulled {tag}" in pulled.stdout, pulled.stdout + pulled.stderr
    env = {**os.environ, "BENTOML_HOME": str(home), "TUNELOOP_DB_URL": f"sqlite:///{tmp_path / 'serving.db'}"}
    with serving(project, env) as url:
        answer = httpx.post(f"{url}/classify", json={"texts": ["my card is lost"]}, timeout=30)
        assert answer.status_code == 200 and answer.json()[0]["model"] == tag
