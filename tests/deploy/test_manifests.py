"""The Kubernetes manifests, checked offline: what `just deploy-check` runs, and that each check catches what
it is there to catch."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed; it renders the overlays")


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(DEPLOY))
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check = _load("check")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Both overlays, rendered by kubectl when it is installed, else by kustomize_lite."""
    return {o: check.render(DEPLOY / "overlays" / o) for o in ("dev", "prod")}


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


# -- the whole check, as `just deploy-check` runs it -----------------------------------------------------


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_deploy_check_passes(overlay: str) -> None:
    proc = subprocess.run([sys.executable, str(DEPLOY / "check.py"), str(DEPLOY / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"deploy/overlays/{overlay}: ok" in proc.stdout
    assert "example Experiments valid against the Experiment CRD" in proc.stdout


def test_deploy_check_without_kubectl(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "KUBECTL": ""}
    proc = subprocess.run([sys.executable, str(DEPLOY / "check.py"), "--renderer", "kubectl"], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env, check=False)
    assert proc.returncode == 2 and "kubectl not found" in proc.stderr
    proc = subprocess.run([sys.executable, str(DEPLOY / "check.py"), str(DEPLOY / "overlays" / "dev")],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kustomize_lite" in proc.stdout and "deploy/overlays/dev: ok" in proc.stdout


@needs_kubectl
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kustomize_lite_renders_like_kubectl(overlay: str) -> None:
    def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}

    lite = by_key(check.render(DEPLOY / "overlays" / overlay, "lite"))
    real = by_key(check.render(DEPLOY / "overlays" / overlay, "kubectl"))
    assert lite == real


def test_kustomize_lite_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    lite = _load("kustomize_lite")
    (tmp_path / "kustomization.yaml").write_text("resources: []\nimages:\n- {name: natib, newTag: dev}\n")
    with pytest.raises(lite.Unsupported, match="images not supported by kustomize_lite"):
        lite.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [a.yaml]\nreplicas:\n- {name: missing, count: 2}\n")
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    with pytest.raises(ValueError, match="no Deployment or StatefulSet named missing"):
        lite.render(tmp_path)


def test_just_recipe_runs_the_check() -> None:
    just = shutil.which("just") or str(Path(sys.executable).parent / "just")
    if not Path(just).exists():
        pytest.skip("just is not installed (dev extra: rust-just)")
    proc = subprocess.run([just, "--dry-run", "deploy-check"], capture_output=True, text=True, timeout=30,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "deploy/check.py" in proc.stderr + proc.stdout


# -- overlays -------------------------------------------------------------------------------------------


def test_overlays_scale_everything(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, replicas in (("dev", 1), ("prod", 3)):
        objects = rendered[overlay]
        deps = check.actor_deployments(objects)
        assert set(deps) == {"controller", "suggestion", "launcher", "collector", "early-stopping",
                             "k8s-controller", "dbmanager"}
        assert {d["spec"]["replicas"] for k, d in deps.items() if k != "k8s-controller"} == {replicas}
        assert deps["k8s-controller"]["spec"]["replicas"] == 1
        assert deps["k8s-controller"]["spec"]["strategy"] == {"type": "Recreate"}
        assert find(objects, "StatefulSet", "nats")["spec"]["replicas"] == replicas
        assert all(o["metadata"].get("namespace") == "kubeflow" for o in objects
                   if o["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"))
    prod_conf = find(rendered["prod"], "ConfigMap", "nats-config")["data"]["nats.conf"]
    dev_conf = find(rendered["dev"], "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "cluster {" in prod_conf and "cluster {" not in dev_conf
    assert "jetstream {" in prod_conf and "jetstream {" in dev_conf
    assert find(rendered["dev"], "Service", "nats-headless")["spec"]["clusterIP"] == "None"


def test_printer_columns_match_katib(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for plural in ("experiments", "trials", "suggestions"):
        crd = find(rendered["dev"], "CustomResourceDefinition", f"{plural}.kubeflow.org")
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1beta1" and version["subresources"] == {"status": {}}
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        assert columns["Type"] == ".status.conditions[-1:].type"
        assert columns["Status"] == ".status.conditions[-1:].status"
        assert columns["Age"] == ".metadata.creationTimestamp"


# -- each check catches what it should ------------------------------------------------------------------


def test_kubernetes_schemas_catch_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = copy.deepcopy(rendered["dev"])
    assert check.check_objects(objects) == []
    find(objects, "Deployment", "natib-launcher")["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 5
    find(objects, "StatefulSet", "nats")["spec"]["replicas"] = "three"
    problems = check.check_objects(objects)
    assert any("Deployment/natib-launcher" in p and "terminationGracePeriodSecond" in p for p in problems)
    assert any("StatefulSet/nats" in p and "replicas" in p for p in problems)


def test_custom_resources_are_checked_against_our_crds(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = copy.deepcopy(rendered["dev"])
    exp = yaml.safe_load((REPO / "examples" / "random.yaml").read_text())
    exp["metadata"]["namespace"] = "kubeflow"
    assert check.check_objects([*objects, exp]) == []
    bad = copy.deepcopy(exp)
    bad["spec"]["parallelTrialCounts"] = 3
    bad["spec"]["maxTrialCount"] = "twelve"
    bad["spec"]["objective"]["type"] = "maximise"
    problems = check.check_objects([*objects, bad])
    assert any("parallelTrialCounts" in p and "not allowed" in p for p in problems)
    assert any("spec.maxTrialCount" in p and "'twelve' is not of type 'integer'" in p for p in problems)
    assert any("spec.objective.type" in p and "'maximise' is not one of" in p for p in problems)
    # The trial template's spec is any Kubernetes object, so its fields are not ours to refuse.
    free = copy.deepcopy(exp)
    free["spec"]["trialTemplate"]["trialSpec"]["spec"]["anything"] = {"goes": True}
    assert check.check_objects([*objects, free]) == []


def test_every_example_experiment_validates(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    files = sorted((REPO / "examples").rglob("*.yaml"))
    problems, count = check.check_examples(rendered["dev"], files)
    assert problems == []
    assert count == sum(1 for f in files for d in yaml.safe_load_all(f.read_text())
                        if isinstance(d, dict) and d.get("kind") == "Experiment") >= 20
    typo = tmp_path / "typo.yaml"
    doc = yaml.safe_load((REPO / "examples" / "random.yaml").read_text())
    doc["spec"]["parameters"][0]["feasibleSpace"]["mni"] = "0.1"
    typo.write_text(yaml.safe_dump(doc))
    problems, count = check.check_examples(rendered["dev"], [typo])
    assert count == 1 and len(problems) == 1 and "'mni' was unexpected" in problems[0]


def test_crd_schemas_must_be_structural() -> None:
    assert check.structural_problems({"type": "object", "properties": {"a": {"type": "string"}}}) == []
    assert check.structural_problems({"type": "object", "properties": {"a": {"description": "x"}}}) == [".a: no type"]
    assert check.structural_problems({"type": "object", "properties": {"a": {"type": "object"}}}) == [
        ".a: an object with no properties (use x-kubernetes-preserve-unknown-fields)"]
    assert check.structural_problems({"type": "object", "properties": {
        "a": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}) == []


def test_house_rules_for_actor_deployments(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = copy.deepcopy(rendered["dev"])
    assert check.check_deployments(objects, 1) == []
    spec = find(objects, "Deployment", "natib-suggestion")["spec"]["template"]["spec"]
    spec["terminationGracePeriodSeconds"] = 20
    spec["securityContext"]["runAsNonRoot"] = False
    spec["serviceAccountName"] = "nobody"
    c = spec["containers"][0]
    c["securityContext"]["readOnlyRootFilesystem"] = False
    c["securityContext"]["capabilities"]["drop"] = ["NET_RAW"]
    del c["readinessProbe"]
    del c["resources"]["limits"]["memory"]
    c["livenessProbe"]["httpGet"]["port"] = "nope"
    problems = check.check_deployments(objects, 1)
    expected = [
        "terminationGracePeriodSeconds 20 is not above NATIB_DRAIN_TIMEOUT 20 + 10",
        "runAsNonRoot must be true", "serviceAccountName 'nobody' is not defined",
        "readOnlyRootFilesystem must be true", "capabilities.drop must be [ALL]", "no readinessProbe",
        "no resources.limits.memory", "livenessProbe port 'nope' is not a container port",
    ]
    for text in expected:
        assert any("natib-suggestion" in p and text in p for p in problems), text
    assert check.check_deployments(objects, 3)  # replicas 1 where 3 are expected
    launcher = find(objects, "Deployment", "natib-launcher")["spec"]["template"]["spec"]["containers"][0]
    launcher["image"] = "registry.example.com/natib:0.2.0"
    assert any("NATIB_SIDECAR_IMAGE natib:0.1.0 is not the container's image" in p
               for p in check.check_deployments(objects, 1))


def test_every_actor_kind_has_a_deployment_and_no_other(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = [o for o in copy.deepcopy(rendered["dev"]) if o["metadata"]["name"] != "natib-early-stopping"]
    assert "no Deployment runs `natib actor early-stopping`" in check.check_deployments(objects, 1)
    find(objects, "Deployment", "natib-collector")["spec"]["template"]["spec"]["containers"][0]["args"] = [
        "actor", "janitor"]
    assert any("natib has no actor kind 'janitor'" in p for p in check.check_deployments(objects, 1))


def test_natib_config_holds_only_what_natib_reads(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = copy.deepcopy(rendered["dev"])
    assert check.check_config(objects) == []
    data = find(objects, "ConfigMap", "natib-config")["data"]
    data["NATIB_DRAIN_TIMEOT"] = "5"
    data["NATIB_LOG_LEVEL"] = "loud"
    problems = check.check_config(objects)
    assert "ConfigMap natib-config: NATIB_DRAIN_TIMEOT is not a variable natib reads" in problems
    assert any("NATIB_LOG_LEVEL: expected one of" in p for p in problems)


def test_nats_config_is_parsed_by_nats_server(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert check.check_nats(rendered["dev"], 1) == []
    assert check.check_nats(rendered["prod"], 3) == []
    objects = copy.deepcopy(rendered["prod"])
    cm = find(objects, "ConfigMap", "nats-config")
    cm["data"]["nats.conf"] = cm["data"]["nats.conf"].replace("nats://nats-2.nats-headless:6222", "").replace(
        "max_payload", "max_paylod")
    sts = find(objects, "StatefulSet", "nats")
    sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "40Gi"
    problems = check.check_nats(objects, 3)
    assert "ConfigMap nats-config: no cluster route to nats-2.nats-headless:6222" in problems
    assert "ConfigMap nats-config: max_file_store 45GB is larger than the volume (40Gi)" in problems
    assert any("nats-server -t" in p and "max_paylod" in p for p in problems)


def test_katib_db_manager_service_reaches_the_dbmanager(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = copy.deepcopy(rendered["dev"])
    assert check.check_dbmanager_service(objects) == []
    svc = find(objects, "Service", "katib-db-manager")
    svc["spec"]["selector"]["app.kubernetes.io/component"] = "controller"
    svc["spec"]["ports"][0]["port"] = 6790
    problems = check.check_dbmanager_service(objects)
    assert "Service katib-db-manager: no port 6789" in problems
    assert "Service katib-db-manager: its selector does not match the dbmanager pods" in problems
    rest = [o for o in objects if o["metadata"]["name"] != "katib-db-manager"]
    assert check.check_dbmanager_service(rest)[0].startswith("Service katib-db-manager: missing")


def test_rbac_check_flags_too_much_and_too_little(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = copy.deepcopy(rendered["dev"])
    problems, _ = check.check_rbac(objects)
    assert problems == []
    role = find(objects, "ClusterRole", "natib-k8s-controller")
    role["rules"] = [r for r in role["rules"] if r["resources"] != ["trials/status"]]
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    problems, _ = check.check_rbac(objects)
    assert any("missing patch kubeflow.org/trials/status" in p for p in problems)
    assert any("grants get core/secrets, which its code never uses" in p for p in problems)
    find(objects, "Deployment", "natib-suggestion")["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    problems, _ = check.check_rbac(objects)
    assert any("natib-suggestion: never calls the Kubernetes API" in p for p in problems)


def test_dockerfile_runs_natib_as_a_non_root_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert users[-1].split(":")[0] == "10001"  # what the Deployments' runAsUser expects
    assert any(ln.startswith("ENTRYPOINT") and '"natib"' in ln for ln in lines)
    assert any("pip install" in ln for ln in lines)
    # torch (the nas extra) only on request: the install takes its extras from a build argument, empty by default.
    assert 'ARG NATIB_EXTRAS=""' in lines
    install = next(ln for ln in lines if "pip install" in ln)
    assert '"$spec"' in install and "torch" not in install


def _quote_numbers(node: Any, key: str = "") -> Any:
    """What a user does to apply a file natib accepts to a cluster: quote the numbers Katib types as strings."""
    if isinstance(node, dict):
        return {k: _quote_numbers(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_quote_numbers(v, key) for v in node]
    if key in ("min", "max", "step", "list", "value") and isinstance(node, int | float) and not isinstance(node, bool):
        return str(node)
    return node


def test_our_crd_accepts_every_katib_file_natib_accepts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # natib's own collection of valid Katib files (Argo workflows, ConfigMap templates, NAS, metadata
    # references, every collector kind): each must pass our Experiment CRD, or the CRD lacks a Katib field.
    schema = check.crd_schemas(rendered["dev"])[("kubeflow.org", "v1beta1", "Experiment")]
    files = sorted((REPO / "tests" / "messages" / "data" / "valid").glob("*.*"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]
    assert len(docs) >= 10
    for doc in docs:
        assert check.schema_errors(_quote_numbers(doc), schema) == [], doc["metadata"]["name"]
    # Unquoted, Katib's string fields are refused, as Katib's own CRD refuses them.
    grid = yaml.safe_load((REPO / "tests" / "messages" / "data" / "valid" / "grid.yaml").read_text())
    assert any("is not of type 'string'" in e for e in check.schema_errors(grid, schema))
