"""natib on a real cluster: apply the dev overlay, run an Experiment as Kubernetes Jobs, clean up.

Runs only when KUBECONFIG names a reachable cluster that has the natib image (see "Deploying to
Kubernetes" in README.md: build it, `kind load docker-image natib:0.1.0`), e.g.

    KUBECONFIG=~/.kube/config .venv/bin/python -m pytest -m k8s_e2e tests/deploy/test_k8s_e2e.py

NATIB_E2E_IMAGE overrides the image the trials run in (default natib:0.1.0, which holds examples/);
NATIB_E2E_KEEP=1 leaves natib installed afterwards (the experiment's namespace is always removed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

KINDS = ("controller", "suggestion", "launcher", "collector", "early-stopping", "k8s-controller", "dbmanager")
IMAGE = os.environ.get("NATIB_E2E_IMAGE", "natib:0.1.0")


def _cluster_problem() -> str | None:
    config = os.environ.get("KUBECONFIG", "")
    if not config:
        return "KUBECONFIG is not set (this test needs a real cluster)"
    if not all(Path(p).expanduser().exists() for p in config.split(os.pathsep) if p):
        return f"KUBECONFIG {config} does not exist"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    proc = subprocess.run(["kubectl", "version", "--request-timeout=5s", "-o", "json"], capture_output=True,
                          text=True, timeout=30, check=False)
    if proc.returncode != 0 or "serverVersion" not in proc.stdout:
        return f"the cluster in KUBECONFIG is not reachable: {proc.stderr.strip()[:200]}"
    return None


pytestmark = [pytest.mark.k8s_e2e, pytest.mark.slow]


def kubectl(*args: str, stdin: str | None = None, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def experiment(namespace: str) -> dict[str, Any]:
    """examples/random.yaml, three trials, run in the natib image (which holds the trainers)."""
    doc = yaml.safe_load((REPO / "examples" / "random.yaml").read_text())
    doc["metadata"] = {"name": "random-digits", "namespace": namespace}
    doc["spec"].update(maxTrialCount=3, parallelTrialCount=3, maxFailedTrialCount=1)
    container = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    container.update(image=IMAGE, imagePullPolicy="IfNotPresent", workingDir="/var/lib/natib/examples")
    return doc


def wait_for(what: str, predicate: Any, timeout: float, interval: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def test_dev_overlay_runs_an_experiment_to_success() -> None:
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    namespace = f"natib-e2e-{uuid.uuid4().hex[:6]}"
    try:
        kubectl("apply", "-k", str(REPO / "deploy" / "overlays" / "dev"), timeout=180)
        kubectl("-n", "kubeflow", "rollout", "status", "statefulset/nats", "--timeout=300s", timeout=320)
        for kind in KINDS:
            kubectl("-n", "kubeflow", "rollout", "status", f"deployment/natib-{kind}", "--timeout=300s", timeout=320)
        kubectl("create", "namespace", namespace)
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(experiment(namespace)))

        def finished() -> dict[str, Any] | None:
            obj = json.loads(kubectl("-n", namespace, "get", "experiment", "random-digits", "-o", "json"))
            conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []
                          if c.get("status") == "True"}
            return obj if "Succeeded" in conditions or "Failed" in conditions else None

        obj = wait_for("experiment random-digits to finish", finished, timeout=600)
        last = obj["status"]["conditions"][-1]
        assert last["type"] == "Succeeded", f"{last['reason']}: {last['message']}"
        assert last["reason"] == "ExperimentMaxTrialsReached"
        assert obj["status"]["trialsSucceeded"] == 3
        assert obj["status"]["currentOptimalTrial"]["bestTrialName"]
        trials = json.loads(kubectl("-n", namespace, "get", "trials", "-o", "json"))["items"]
        assert len(trials) == 3
        table = kubectl("-n", namespace, "get", "experiments")
        assert "TYPE" in table and "Succeeded" in table
        kubectl("-n", namespace, "delete", "experiment", "random-digits", "--timeout=120s", timeout=150)
    finally:
        kubectl("delete", "namespace", namespace, "--ignore-not-found", "--timeout=180s", timeout=200, check=False)
        if os.environ.get("NATIB_E2E_KEEP") != "1":
            kubectl("delete", "-k", str(REPO / "deploy" / "overlays" / "dev"), "--ignore-not-found", "--timeout=180s",
                    timeout=200, check=False)
