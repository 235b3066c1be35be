"""Real Prefect flows for tests/tests/prefect_mirror/, run against a real Prefect server (the
pinned 3.8.8 in the stack's Prefect venv, PREFECT_API_URL set by the test).

    flows.py setup POOL        create a process work pool and deploy `pipeline` and `crasher`
                               from this file to it (a process worker runs them)
    flows.py batch LABEL POOL [local]
                               run flows in this process: a pipeline of tasks that completes, a
                               task that fails, is retried and succeeds, a flow that fails, a
                               flow with a subflow; and, unless `local`, start deployment runs
                               through the worker (one completes, one crashes) and cancel a
                               scheduled one
    flows.py hold FILE         run a flow that stays Running until FILE exists

Each command prints one JSON line with what it did (run ids, names) as its last line. Nothing
here asserts anything: the test compares what Prefect's own API reports with Flowhouse's answer.
"""

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import task_run

HERE = Path(__file__).resolve().parent


@task
def extract(n: int) -> list[int]:
    get_run_logger().info("extracting %d rows", n)
    return list(range(n))


@task
def transform(rows: list[int]) -> int:
    logger = get_run_logger()
    logger.debug("transforming %d rows", len(rows))
    if len(rows) > 2:
        logger.warning("%d rows is more than usual", len(rows))
    return sum(rows)


@task
def load(total: int) -> int:
    get_run_logger().info("loaded a total of %d", total)
    return total


@flow(log_prints=True)
def pipeline(n: int = 3) -> int:
    logger = get_run_logger()
    logger.info("pipeline starting with n=%d", n)
    total = load(transform(extract(n)))
    logger.error("a line at ERROR level, on purpose")
    logger.critical("a line at CRITICAL level, on purpose")
    return total


@task(retries=2, retry_delay_seconds=0)
def flaky_step() -> str:
    if task_run.run_count == 1:
        raise RuntimeError("first attempt fails, on purpose")
    get_run_logger().info("succeeded on attempt %d", task_run.run_count)
    return "ok"


@flow
def flaky() -> str:
    return flaky_step()


@task
def explode() -> None:
    raise ValueError("this task fails, on purpose")


@flow
def doomed() -> None:
    get_run_logger().warning("about to fail")
    explode()


@flow
def child(x: int) -> int:
    get_run_logger().info("child got %d", x)
    return x * 2


@flow
def parent() -> int:
    get_run_logger().info("parent calls a subflow")
    return child(21)


@flow
def crasher() -> None:
    get_run_logger().info("this process exits without reporting a final state")
    sys.stdout.flush()
    time.sleep(1)  # let the log line and the Running event leave
    os._exit(3)


@flow
def holder(path: str) -> str:
    logger = get_run_logger()
    logger.info("running until %s exists", path)
    while not Path(path).exists():
        time.sleep(0.5)
    logger.info("released")
    return "released"


def report(value) -> None:
    print(json.dumps(value, default=str), flush=True)


def setup(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        created = client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    deployments = {}
    for function, name, tags in [(pipeline, "nightly", ["nightly", "etl"]), (crasher, "crash", [])]:
        entrypoint = f"flows.py:{function.fn.__name__}"
        deployment_id = function.from_source(source=str(HERE), entrypoint=entrypoint).deploy(
            name=name, work_pool_name=pool, tags=tags, print_next_steps=False, build=False,
            push=False,
        )
        deployments[f"{function.name}/{name}"] = str(deployment_id)
    report({"pool": str(created.id), "deployments": deployments})


def batch(label: str, pool: str, local: bool) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    runs = {}
    runs["pipeline"] = pipeline(4, return_state=True).state_details.flow_run_id
    runs["flaky"] = flaky(return_state=True).state_details.flow_run_id
    runs["doomed"] = doomed(return_state=True).state_details.flow_run_id
    runs["parent"] = parent(return_state=True).state_details.flow_run_id
    if local:
        report({"label": label, "runs": {k: str(v) for k, v in runs.items()}})
        return

    # Through the worker: deployment and work pool labels are real; one run completes, one
    # crashes (its process exits), one is scheduled for later and cancelled before it starts.
    runs["deployed"] = run_deployment("pipeline/nightly", timeout=0, tags=[label]).id
    runs["crashed"] = run_deployment("crasher/crash", timeout=0).id
    later = run_deployment(
        "pipeline/nightly", timeout=0, scheduled_time=_now() + timedelta(minutes=2)
    )
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(later.id, Cancelled(message="cancelled before it started"))
    runs["cancelled"] = later.id
    report({"label": label, "pool": pool, "runs": {k: str(v) for k, v in runs.items()}})


def _now():
    from prefect.types._datetime import now

    return now("UTC")


def hold(path: str) -> None:
    state = holder(path, return_state=True)
    report({"run": str(state.state_details.flow_run_id), "state": state.type.value})


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "setup":
        setup(sys.argv[2])
    elif command == "batch":
        batch(sys.argv[2], sys.argv[3], sys.argv[4:] == ["local"])
    elif command == "hold":
        hold(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {command!r}; see the docstring")
