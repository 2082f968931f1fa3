"""Fixtures for code that talks to Kubernetes: an emulated API server and a real client pointed at it.

- ``kube``: a running ``Emulator`` (tests/k8s/emulator.py) with natib's resources registered; ``kube.url``
  is its address.
- ``kube_client``: a kubernetes_asyncio ``ApiClient`` for that address, made by ``natib.runtime.kube.api_client``.
- ``jobs``: a ``JobController`` that plays the job controllers through ``kube_client``.
- ``harness``: a ``LauncherHarness``: a fast-polling KubernetesLauncher for ``kube`` and the real metrics
  collector on the test's nats-server; ``job_experiment(name, ...)`` builds an Experiment document.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import msgspec
import pytest
from kubernetes_asyncio.client import ApiClient

from natib.actors.base import Context
from natib.actors.launcher.kubernetes import KubernetesLauncher
from natib.actors.launcher.template import render_trial_spec
from natib.actors.metrics.collector import MetricsCollector
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.commands import LaunchTrial
from natib.messages.spec import Experiment, apply_defaults, load_experiment
from natib.runtime.bus import Bus, RawMessage
from natib.runtime.kube import api_client
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore
from tests.conftest import eventually
from tests.k8s.emulator import Emulator, JobController, install_shims

install_shims()


@pytest.fixture
async def kube() -> AsyncIterator[Emulator]:
    """An emulated Kubernetes API server on a free loopback port."""
    async with Emulator() as em, kmock.Server(em):
        em.register_defaults()
        yield em


@pytest.fixture
async def kube_client(kube: Emulator) -> AsyncIterator[ApiClient]:
    """A real kubernetes_asyncio client talking HTTP to ``kube``."""
    async with await api_client(str(kube.url).rstrip("/")) as api:
        yield api


@pytest.fixture
def jobs(kube_client: ApiClient) -> JobController:
    """Plays the Job / Kubeflow job controllers against ``kube``."""
    return JobController(kube_client)


# -- the launcher against the emulator, with real NATS ---------------------------------------------------


@dataclass
class LauncherHarness:
    """A KubernetesLauncher and the real metrics collector on one NATS server, against ``kube``."""

    bus: Bus
    ctx: Context
    launcher: KubernetesLauncher
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def create_experiment(self, doc: dict[str, Any]) -> Experiment:
        """Record an ExperimentCreated for a Katib Experiment document (defaults applied)."""
        exp = apply_defaults(load_experiment(json.dumps(doc), fmt="json"))
        name = exp.metadata.name
        env = codec.wrap(name, ev.ExperimentCreated(experiment=exp, uid=f"uid-{name}", seed=1), id=f"{name}:created")
        await self.bus.publish(subjects.controller_event(name, "experiment.created"), codec.encode(env),
                               msg_id=f"{name}:created")
        return exp

    def launch_command(self, exp: Experiment, trial: str, assignment: dict[str, str] | None = None) -> LaunchTrial:
        """The LaunchTrial the controller would send for ``trial``."""
        return launch_command(exp, trial, assignment)

    def launch(self, exp: Experiment, trial: str, assignment: dict[str, str] | None = None) -> asyncio.Task[None]:
        """Start handling a LaunchTrial (as a task: it runs until the trial ends)."""
        task = asyncio.create_task(self.launcher.launch(exp.metadata.name, self.launch_command(exp, trial, assignment)))
        self.tasks.append(task)
        return task

    async def trial_events(self, experiment: str, trial: str) -> list[Any]:
        """Every event recorded about the trial, decoded, in order."""
        out = []
        async for raw in self.bus.read(subjects.EVENTS_STREAM, f"natib.evt.{experiment}.trial.{trial}.*"):
            env = codec.decode(raw.data)
            if env is not None:
                out.append(env.body)
        return out

    async def outcome(self, experiment: str, trial: str, timeout: float = 15.0) -> Any:
        """Wait for the trial's terminal event and return it."""
        async def find() -> Any:
            return next((e for e in await self.trial_events(experiment, trial) if isinstance(e, ev.TRIAL_OUTCOMES)),
                        None)

        return await eventually(find, timeout=timeout)

    async def logs(self, experiment: str, trial: str) -> list[RawMessage]:
        """Every NATIB_LOGS message of the trial."""
        return [raw async for raw in self.bus.read(subjects.LOGS_STREAM, subjects.trial_logs(experiment, trial))]


@pytest.fixture
async def harness(kube: Emulator, nats_server: TestServer, tmp_path: Path) -> AsyncIterator[LauncherHarness]:
    """A fast-polling KubernetesLauncher pointed at ``kube`` plus the metrics collector, on a real NATS."""
    bus = await Bus.connect(nats_server.url)
    await bus.ensure_topology()
    settings = Settings(nats_url=nats_server.url, home=tmp_path / "home", launcher="kubernetes", ack_wait=5.0,
                        drain_timeout=1.0)
    ctx = Context(bus=bus, store=EventStore(bus), settings=settings, stop=asyncio.Event())
    launcher = KubernetesLauncher(ctx, host=str(kube.url).rstrip("/"))
    launcher.watch_seconds = 2
    launcher.pod_poll_seconds = 0.05
    launcher.log_grace_seconds = 2.0
    launcher.sidecar_grace_seconds = 5.0
    h = LauncherHarness(bus=bus, ctx=ctx, launcher=launcher)
    collector = asyncio.create_task(MetricsCollector(ctx).run())
    try:
        yield h
    finally:
        ctx.stop.set()
        for task in h.tasks:
            task.cancel()
        for task in h.tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(collector, 5)
        await launcher.close()
        await bus.close()


def job_experiment(name: str, *, collector: dict[str, Any] | None = None, retain: bool = False,
                   trial_spec: dict[str, Any] | None = None, **template: Any) -> dict[str, Any]:
    """A Katib Experiment document whose trials are batch/v1 Jobs (or ``trial_spec``) printing metrics."""
    spec = trial_spec or {
        "apiVersion": "batch/v1", "kind": "Job",
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "training-container", "image": "docker.io/example/train:1",
             "command": ["python", "train.py", "--lr=${trialParameters.learningRate}"]}]}}},
    }
    doc: dict[str, Any] = {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": "accuracy", "additionalMetricNames": ["loss"]},
            "algorithm": {"algorithmName": "random"},
            "maxTrialCount": 1, "parallelTrialCount": 1,
            "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.1"}}],
            "trialTemplate": {"retain": retain, "primaryContainerName": "training-container",
                              "trialParameters": [{"name": "learningRate", "reference": "lr"}],
                              "trialSpec": spec, **template},
        },
    }
    if collector is not None:
        doc["spec"]["metricsCollectorSpec"] = collector
    return doc


def launch_command(exp: Experiment, trial: str, assignment: dict[str, str] | None = None) -> LaunchTrial:
    """The LaunchTrial the controller would send for ``trial`` (``lr`` = 0.05 unless ``assignment`` says)."""
    template = exp.spec.trial_template
    assert template is not None and template.trial_spec is not None
    params = [msgspec.to_builtins(p) for p in (template.trial_parameters or [])]
    run_spec = render_trial_spec(template.trial_spec, params, assignment or {"lr": "0.05"}, trial_name=trial,
                                 namespace=exp.metadata.namespace or "default")
    collector = msgspec.to_builtins(exp.spec.metrics_collector_spec) if exp.spec.metrics_collector_spec else None
    return LaunchTrial(trial=trial, run_spec=run_spec, primary_container_name=template.primary_container_name,
                       metrics_collector=collector, metric_names=exp.spec.metric_names())
