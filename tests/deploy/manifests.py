"""Reading rendered manifests the way the cluster will: effective env, ports, selectors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.kustomize import Object, containers_of, pod_spec, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")

# Secrets the manifests read but do not create, and who creates them.
# cairn-pg-app: written by CloudNativePG for the Cluster cairn-pg (keys of its "app" secret).
CNPG_APP_SECRET_KEYS = {"username", "password", "host", "port", "dbname", "uri", "jdbc-uri"}
PLACEHOLDERS = {"uri": "postgresql://cairn:secret@cairn-pg-rw.cairn:5432/cairn"}


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: list[Object]

    def of_kind(self, kind: str) -> list[Object]:
        return [o for o in self.objects if o["kind"] == kind]

    def find(self, kind: str, name: str) -> Object | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def cairn_deployments(self) -> list[Object]:
        return [
            d
            for d in self.of_kind("Deployment")
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "cairn"
        ]

    def workloads(self) -> list[Object]:
        return [o for o in self.objects if pod_spec(o) is not None]


def render_overlay(overlay: str) -> Rendered:
    return Rendered(overlay, render(K8S / "overlays" / overlay))


class SecretSource:
    """Resolves secretKeyRefs: to a Secret in the render, or to one created outside it."""

    def __init__(self, rendered: Rendered, documented: dict[str, set[str]]) -> None:
        self.rendered = rendered
        self.documented = documented

    def keys(self, name: str) -> set[str] | None:
        secret = self.rendered.find("Secret", name)
        if secret is not None:
            return set(secret.get("stringData", {})) | set(secret.get("data", {}))
        if name.endswith("-app") and self.rendered.find("Cluster", name.removesuffix("-app")):
            return CNPG_APP_SECRET_KEYS
        return self.documented.get(name)


def effective_env(rendered: Rendered, container: Object, secrets: SecretSource) -> dict[str, str]:
    """The environment the container starts with; secret values replaced by placeholders.

    Raises AssertionError naming any reference that would leave the pod unable to start.
    """
    env: dict[str, str] = {}
    where = f"{rendered.overlay}: container {container['name']}"
    for source in container.get("envFrom", []):
        if "prefix" in source:
            raise AssertionError(f"{where}: envFrom prefix is not expected")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            cm = rendered.find("ConfigMap", ref["name"])
            assert cm is not None or ref.get("optional"), f"{where}: no ConfigMap {ref['name']}"
            env.update({k: str(v) for k, v in (cm or {}).get("data", {}).items()})
        elif "secretRef" in source:
            ref = source["secretRef"]
            keys = secrets.keys(ref["name"])
            assert keys is not None or ref.get("optional"), f"{where}: no Secret {ref['name']}"
            env.update({k: "secret" for k in keys or ()})
    for var in container.get("env", []):
        env[var["name"]] = _value(rendered, var, secrets, where)
    return env


def _value(rendered: Rendered, var: Object, secrets: SecretSource, where: str) -> str:
    if "value" in var:
        assert isinstance(var["value"], str), f"{where}: {var['name']} must be a string"
        return var["value"]
    source = var["valueFrom"]
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        keys = secrets.keys(ref["name"])
        assert keys is not None, (
            f"{where}: {var['name']} reads Secret {ref['name']!r}, which is neither rendered, "
            "written by an operator we deploy, nor created in docs/deploy.md"
        )
        assert ref["key"] in keys, f"{where}: Secret {ref['name']} has no key {ref['key']!r}"
        return PLACEHOLDERS.get(ref["key"], "secret")
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        cm = rendered.find("ConfigMap", ref["name"])
        assert cm is not None, f"{where}: no ConfigMap {ref['name']}"
        assert ref["key"] in cm.get("data", {}), f"{where}: {ref} missing"
        return str(cm["data"][ref["key"]])
    if "fieldRef" in source:
        return "pod-name-0"
    raise AssertionError(f"{where}: unsupported valueFrom {source}")


def documented_secrets(doc: Path) -> dict[str, set[str]]:
    """Secrets the docs create: `kubectl create secret generic NAME --from-literal=KEY=...`."""
    text = doc.read_text(encoding="utf-8").replace("\\\n", " ")
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"kubectl[^\n]*create secret generic (\S+)([^\n]*)", text):
        keys = set(re.findall(r"--from-(?:literal|file)=([A-Za-z0-9_.-]+)=", match[2]))
        found.setdefault(match[1], set()).update(keys)
    return found


def module_command(container: Object) -> str | None:
    """The module of `python -m MODULE ...`, or None for another command."""
    command = [*container.get("command", []), *container.get("args", [])]
    if len(command) >= 3 and command[0] in {"python", "python3"} and command[1] == "-m":
        return str(command[2])
    return None


def workload_containers(obj: Object) -> list[Object]:
    return list(containers_of(obj))


def quantity(value: Any) -> float:
    """CPU or memory quantity in base units (cores, bytes)."""
    text = str(value)
    suffixes = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    for suffix, factor in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)
