"""`--engine ray`: the jobs over a Ray cluster, one worker (actor) per GPU, or per process on the CPU.

Each worker loads the pipeline once (on a GPU under `--budget auto`: its own free memory) and runs
one job at a time; a job goes to whichever worker frees up first. The image comes back to this
process, which writes it and the report exactly as the in-process engine does. A job whose worker
dies (a node lost, a process killed) goes back to the queue for another worker, up to
MAX_ATTEMPTS times. Input images must be readable at the same path on every node (a shared
filesystem); outputs are written here only. lowmem must be installed on every node.
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from dataclasses import replace
from typing import Optional

from lowmem.batch.driver import JobDriver
from lowmem.batch.execute import BatchSettings, JobOutcome, execute, load_pipeline, worker_name
from lowmem.batch.jobs import Job
from lowmem.errors import LowmemError

MAX_ATTEMPTS = 3


class RayEngineError(LowmemError, RuntimeError):
    """The Ray engine cannot run: Ray missing, no workers, a pipeline no worker could load."""


class BatchWorker:
    """One Ray actor: the pipeline loaded once, then jobs one at a time."""

    def __init__(self, settings: BatchSettings):
        self.settings = settings
        self.pipe, self.load_error = None, None
        try:
            self.pipe = load_pipeline(settings)
        except LowmemError as exc:  # said once by `ready`, not as an actor death retried for every job
            self.load_error = str(exc)

    def ready(self) -> tuple[str, Optional[str]]:
        return worker_name(), self.load_error

    def run(self, job: Job) -> JobOutcome:
        return execute(self.pipe, job, self.settings)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayEngineError("--engine ray needs Ray: pip install 'lowmem[ray]' (or run without --engine ray)") from None
    return ray


def _start_workers(ray, settings: BatchSettings, workers: Optional[int]) -> list:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if workers is None:
        if not gpus:
            raise RayEngineError("this Ray cluster has no GPU; say how many CPU workers to start with --workers N")
        workers = gpus
    if workers < 1:
        raise RayEngineError(f"--workers must be at least 1, got {workers}")
    on_gpu = gpus > 0 and (settings.device is None or settings.device.startswith("cuda"))
    options = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": max(1, cpus // workers)}
    if on_gpu:
        settings = replace(settings, device="cuda")  # the one GPU Ray makes visible to each worker
    actors = [ray.remote(**options)(BatchWorker).remote(settings) for _ in range(workers)]
    loaded, error = [], None
    for actor, ready in [(actor, actor.ready.remote()) for actor in actors]:
        try:
            name, error = ray.get(ready)
        except ray.exceptions.RayActorError as exc:
            name, error = "?", f"the worker died while loading ({type(exc).__name__})"
        if error is None:
            loaded.append(actor)
        else:
            print(f"worker {name} could not load the pipeline: {error}", file=sys.stderr)
            ray.kill(actor)
    if not loaded:
        raise RayEngineError(f"no worker could load the pipeline: {error}")
    return loaded


def run_on_ray(driver: JobDriver, settings: BatchSettings, address: Optional[str] = None,
               workers: Optional[int] = None) -> None:
    if not driver.pending:
        return
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        _dispatch(ray, driver, _start_workers(ray, settings, workers))
    finally:
        if started_here:
            ray.shutdown()


def _dispatch(ray, driver: JobDriver, actors: list) -> None:
    """Keep every live worker busy with the next job; requeue the job of a worker that dies."""
    queue, attempts = deque(driver.pending), Counter()
    running: dict = {}  # ObjectRef -> (actor, job)
    idle = list(actors)

    def feed() -> None:
        while idle and queue:
            actor, job = idle.pop(), queue.popleft()
            attempts[job.line] += 1
            running[actor.run.remote(job)] = (actor, job)

    with driver:
        feed()
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, job = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                actors.remove(actor)
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if attempts[job.line] < MAX_ATTEMPTS and actors:
                    print(f"a worker died during line {job.line} ({reason}); retrying it on another worker "
                          f"({len(actors)} left)", file=sys.stderr)
                    queue.appendleft(job)
                else:
                    driver.finish(job, JobOutcome(None, 0.0, f"its worker died {attempts[job.line]} time(s): {reason}"),
                                  attempts=attempts[job.line])
                if not actors:
                    for lost in list(queue) + [j for _, j in running.values()]:
                        driver.finish(lost, JobOutcome(None, 0.0, "every Ray worker died before this job could run"))
                    raise RayEngineError("every Ray worker died; the finished jobs are saved, rerun to resume")
                feed()
                continue
            driver.finish(job, outcome, attempts=attempts[job.line])
            idle.append(actor)
            feed()
