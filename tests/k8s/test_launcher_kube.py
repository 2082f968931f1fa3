"""natib.runtime.kube: the API client factory, error tests and resource paths every Kubernetes user relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiException, CustomObjectsApi

from natib.runtime.errors import ConfigError
from natib.runtime.kube import (
    HOST_ENV,
    api_client,
    api_status,
    foreground_delete,
    is_conflict,
    is_gone,
    is_not_found,
    plural_of,
    resource_for,
)
from tests.k8s.emulator import Emulator


@pytest.mark.parametrize(("api_version", "kind", "group", "version", "plural"), [
    ("batch/v1", "Job", "batch", "v1", "jobs"),
    ("kubeflow.org/v1", "TFJob", "kubeflow.org", "v1", "tfjobs"),
    ("kubeflow.org/v1", "PyTorchJob", "kubeflow.org", "v1", "pytorchjobs"),
    ("kubeflow.org/v1", "MPIJob", "kubeflow.org", "v1", "mpijobs"),
    ("kubeflow.org/v1", "XGBoostJob", "kubeflow.org", "v1", "xgboostjobs"),
    ("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    ("argoproj.io/v1alpha1", "Workflow", "argoproj.io", "v1alpha1", "workflows"),
    ("tekton.dev/v1", "PipelineRun", "tekton.dev", "v1", "pipelineruns"),
    ("kubeflow.org/v1beta1", "Experiment", "kubeflow.org", "v1beta1", "experiments"),
    ("v1", "Pod", "", "v1", "pods"),
    ("example.com/v1", "TrainPolicy", "example.com", "v1", "trainpolicies"),
    ("example.com/v1", "Gateway", "example.com", "v1", "gateways"),
    ("example.com/v1", "Mesh", "example.com", "v1", "meshes"),
    ("example.com/v1", "Class", "example.com", "v1", "classes"),
])
def test_resource_for(api_version: str, kind: str, group: str, version: str, plural: str) -> None:
    res = resource_for(api_version, kind)
    assert (res.group, res.version, res.plural, res.kind) == (group, version, plural, kind)
    assert res.api_version == api_version


def test_paths() -> None:
    assert resource_for("batch/v1", "Job").path("ns", "j", "status") == "/apis/batch/v1/namespaces/ns/jobs/j/status"
    assert resource_for("v1", "Pod").path("ns", "p", "log") == "/api/v1/namespaces/ns/pods/p/log"
    assert resource_for("kubeflow.org/v1", "TFJob").path("ns") == "/apis/kubeflow.org/v1/namespaces/ns/tfjobs"
    assert plural_of("Job") == "jobs"


@pytest.mark.parametrize(("api_version", "kind", "reason"), [
    ("", "Job", "apiVersion: required"),
    ("batch/v1", "", "kind: required"),
    ("a/b/c", "Job", "apiVersion: expected VERSION or GROUP/VERSION, got 'a/b/c'"),
    ("batch/", "Job", "apiVersion: expected VERSION or GROUP/VERSION, got 'batch/'"),
])
def test_resource_for_rejects_bad_fields(api_version: str, kind: str, reason: str) -> None:
    with pytest.raises(ValueError, match="^" + reason.replace("/", "/") + "$"):
        resource_for(api_version, kind)


def test_error_tests() -> None:
    assert is_conflict(ApiException(status=409)) and not is_conflict(ApiException(status=404))
    assert is_not_found(ApiException(status=404)) and not is_not_found(ValueError("404"))
    assert is_gone(ApiException(status=410))
    assert api_status(ApiException(status=500)) == 500 and api_status(RuntimeError()) is None
    assert foreground_delete()["propagationPolicy"] == "Foreground"


async def test_explicit_host_talks_to_the_server(kube: Emulator) -> None:
    async with await api_client(str(kube.url)) as api:
        listed = await CustomObjectsApi(api).list_namespaced_custom_object("batch", "v1", "default", "jobs")
        assert listed["items"] == []
        with pytest.raises(ApiException) as info:
            await CustomObjectsApi(api).get_namespaced_custom_object("batch", "v1", "default", "jobs", "nope")
        assert is_not_found(info.value)


async def test_host_priority(kube: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://kubeconfig.example:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # in a pod, but without a service account
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv(HOST_ENV, raising=False)
    async with await api_client() as api:
        assert api.configuration.host == "https://kubeconfig.example:6443"
    monkeypatch.setenv(HOST_ENV, "http://from-env:8001/")
    async with await api_client() as api:
        assert api.configuration.host == "http://from-env:8001"
    async with await api_client(str(kube.url)) as api:
        assert api.configuration.host == str(kube.url).rstrip("/")


async def test_no_configuration_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(HOST_ENV, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=f"no Kubernetes API server: set {HOST_ENV}"):
        await api_client()
    monkeypatch.setenv(HOST_ENV, "kube:8001")
    with pytest.raises(ConfigError, match=f"{HOST_ENV}: expected an http:// or https:// address, got 'kube:8001'"):
        await api_client()
