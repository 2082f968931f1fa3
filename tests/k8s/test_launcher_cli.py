"""End to end: ``natib run`` with NATIB_LAUNCHER=kubernetes against the emulated API server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from natib.runtime.kube import TRIAL_LABEL
from tests.k8s.conftest import job_experiment
from tests.k8s.emulator import Emulator, JobController

NATIB = str(Path(sys.executable).parent / "natib")


@pytest.mark.slow
async def test_natib_run_on_kubernetes(kube: Emulator, jobs: JobController, natib_env: dict[str, str],
                                       tmp_path: Path) -> None:
    doc = job_experiment("kcli")
    doc["spec"]["maxTrialCount"] = 2
    doc["spec"]["parallelTrialCount"] = 2
    path = tmp_path / "kcli.json"
    path.write_text(json.dumps(doc))
    env = {**natib_env, "NATIB_LAUNCHER": "kubernetes", "NATIB_KUBE_HOST": str(kube.url)}
    proc = await asyncio.create_subprocess_exec(NATIB, "run", str(path), "--timeout", "90", env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finished: set[str] = set()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while len(finished) < 2 and loop.time() < deadline and proc.returncode is None:
            live = [dict(o.raw) for (r, _ns, name), o in kube.objects.items()
                    if r.plural == "jobs" and not o.deleted and name not in finished]
            for job in live:
                name = job["metadata"]["name"]
                assert job["metadata"]["labels"][TRIAL_LABEL] == name
                lr = job["spec"]["template"]["spec"]["containers"][0]["command"][-1].split("=")[1]
                pod = await jobs.start(job)
                log = kube.log("default", pod["metadata"]["name"], "training-container")
                log.write(f"lr={lr}\naccuracy={float(lr) * 5:.4f}\n")
                await jobs.succeed(job)
                log.close()
                finished.add(name)
            await asyncio.sleep(0.1)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "experiment kcli Succeeded (ExperimentMaxTrialsReached)" in text
    assert "trials: 2 total, 2 succeeded" in text
    assert len(finished) == 2
    await_deleted = [n for (r, _ns, n), o in kube.objects.items() if r.plural == "jobs" and not o.deleted]
    assert await_deleted == [], "retain: false deletes every trial's job"
