"""What every Kubernetes user inside natib needs: an API client, error tests, Katib's labels, resource paths.

`api_client(host)` is an async factory; the `ApiClient` it returns is itself an async context manager, so
the usual form is ``async with await api_client() as api: ...`` (or call ``await api.close()``). The API
server is chosen as: the explicit ``host`` (tests) > env ``NATIB_KUBE_HOST`` > the in-cluster service
account > the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``).

`resource_for(api_version, kind)` maps an object's apiVersion and kind to the group, version and plural
its REST path needs, for the kinds Katib knows (Job, TFJob, PyTorchJob, MPIJob, XGBoostJob, ...) and for
any custom kind (lower-cased, English plural).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient, ApiException
from kubernetes_asyncio.config import ConfigException

from natib.runtime.errors import ConfigError

__all__ = [
    "EXPERIMENT_LABEL",
    "HOST_ENV",
    "TRIAL_LABEL",
    "KubeResource",
    "api_client",
    "api_status",
    "foreground_delete",
    "is_conflict",
    "is_gone",
    "is_not_found",
    "plural_of",
    "resource_for",
]

HOST_ENV = "NATIB_KUBE_HOST"
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
TRIAL_LABEL = "katib.kubeflow.org/trial"


async def api_client(host: str | None = None) -> ApiClient:
    """A kubernetes_asyncio ApiClient for ``host``, else NATIB_KUBE_HOST, else in-cluster, else kubeconfig.

    Raises ConfigError naming what was tried when no configuration can be found.
    """
    cfg = client.Configuration()
    host = host or os.environ.get(HOST_ENV, "").strip() or None
    if host is not None:
        if not host.startswith(("http://", "https://")):
            raise ConfigError(f"{HOST_ENV}: expected an http:// or https:// address, got {host!r}")
        cfg.host = host.rstrip("/")
        return ApiClient(configuration=cfg)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=cfg)
            return ApiClient(configuration=cfg)
        except ConfigException:
            pass  # in a pod without a mounted service account: fall back to a kubeconfig
    try:
        # KUBECONFIG is read now, not when kubernetes_asyncio was imported.
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
    except (ConfigException, OSError, TypeError) as exc:
        raise ConfigError(
            f"no Kubernetes API server: set {HOST_ENV}, run in a pod with a service account, "
            f"or provide a kubeconfig ({exc})"
        ) from exc
    return ApiClient(configuration=cfg)


def api_status(exc: BaseException) -> int | None:
    """The HTTP status of a Kubernetes API error, or None for any other exception."""
    if isinstance(exc, ApiException):
        return int(exc.status) if exc.status is not None else None
    return None


def is_conflict(exc: BaseException) -> bool:
    """409: the object already exists (create) or changed underneath (update)."""
    return api_status(exc) == 409


def is_not_found(exc: BaseException) -> bool:
    """404: no such object (or no such resource type)."""
    return api_status(exc) == 404


def is_gone(exc: BaseException) -> bool:
    """410: a watch's resourceVersion is too old and the watch must restart from a fresh list."""
    return api_status(exc) == 410


def foreground_delete() -> dict[str, Any]:
    """A DeleteOptions body that removes the object only after its dependents (pods) are gone."""
    return {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}


@dataclass(frozen=True)
class KubeResource:
    """Where objects of one kind live in the API: ``group`` is "" for the core group."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        """The apiVersion objects of this kind carry."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        """The REST path of the collection, or of one object (and one of its subresources)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if sub:
                base += f"/{sub}"
        return base


_KNOWN_PLURALS = {
    "Job": "jobs",
    "CronJob": "cronjobs",
    "Pod": "pods",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Event": "events",
    "TFJob": "tfjobs",
    "PyTorchJob": "pytorchjobs",
    "MPIJob": "mpijobs",
    "XGBoostJob": "xgboostjobs",
    "PaddleJob": "paddlejobs",
    "JAXJob": "jaxjobs",
    "TrainJob": "trainjobs",
    "Experiment": "experiments",
    "Trial": "trials",
    "Suggestion": "suggestions",
    "Workflow": "workflows",
    "PipelineRun": "pipelineruns",
    "TaskRun": "taskruns",
}


def plural_of(kind: str) -> str:
    """The resource name of a kind: the known ones, else lower case with an English plural ending."""
    if kind in _KNOWN_PLURALS:
        return _KNOWN_PLURALS[kind]
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def resource_for(api_version: str, kind: str) -> KubeResource:
    """The group/version/plural of an object with this apiVersion and kind; ValueError names a bad field."""
    if not isinstance(api_version, str) or not api_version.strip():
        raise ValueError("apiVersion: required")
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError("kind: required")
    parts = api_version.strip().split("/")
    if len(parts) == 1:
        group, version = "", parts[0]
    elif len(parts) == 2 and all(parts):
        group, version = parts
    else:
        raise ValueError(f"apiVersion: expected VERSION or GROUP/VERSION, got {api_version!r}")
    return KubeResource(group=group, version=version, plural=plural_of(kind.strip()), kind=kind.strip())
