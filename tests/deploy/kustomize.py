"""A small kustomize renderer: exactly the features deploy/k8s uses, and a loud error for any other.

Supported in a ``kustomization.yaml``: ``resources`` (files of YAML documents, or directories
holding a kustomization), ``patches`` given by ``path`` (strategic-merge patches that name their
target by apiVersion, kind and name), ``images`` (``name``, ``newName``, ``newTag``) and
``namespace``. Lists of mappings that all carry a ``name`` are merged by name (containers, env,
volumes), as Kubernetes' strategic merge does; other lists are replaced. When ``kubectl`` is on the
machine, the tests also compare this renderer's output with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not support, or is inconsistent."""


def load_documents(path: Path) -> list[Object]:
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeError(f"{path}: every document must be a Kubernetes object")
    return docs


def render(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize DIRECTORY`` would print, in resource order."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unsupported = set(spec) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizeError(
            f"{kfile}: fields not supported by our renderer: {sorted(unsupported)}"
        )

    objects: list[Object] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        objects.extend(render(target) if target.is_dir() else load_documents(target))
    _refuse_duplicates(objects, kfile)

    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{kfile}: only `patches: - path: FILE` is supported")
        for patch in load_documents(directory / patch_entry["path"]):
            _apply_patch(objects, patch, kfile)

    for image in spec.get("images", []):
        _set_image(objects, image)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def identity(obj: Object) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def _refuse_duplicates(objects: list[Object], kfile: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        key = identity(obj)
        if key in seen:
            raise KustomizeError(f"{kfile}: {key} is defined twice")
        seen.add(key)


def _apply_patch(objects: list[Object], patch: Object, kfile: Path) -> None:
    matches = [i for i, obj in enumerate(objects) if identity(obj) == identity(patch)]
    if len(matches) != 1:
        raise KustomizeError(f"{kfile}: patch target {identity(patch)} not found")
    index = matches[0]
    objects[index] = strategic_merge(objects[index], patch)


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(str(k).startswith("$") for k in patch):
            raise KustomizeError(f"patch directives are not supported: {list(patch)}")
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = copy.deepcopy(base)
        positions = {item["name"]: i for i, item in enumerate(merged_list)}
        added = []
        for item in patch:
            if item["name"] in positions:
                at = positions[item["name"]]
                merged_list[at] = strategic_merge(merged_list[at], item)
            else:
                added.append(copy.deepcopy(item))
        return added + merged_list  # as kubectl kustomize does: new items come first
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def containers_of(obj: Object) -> Iterator[Object]:
    """Every container and init container of a workload's pod template."""
    pod = pod_spec(obj)
    if pod is not None:
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def pod_spec(obj: Object) -> Object | None:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template = spec.get("template")
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"} and template:
        pod: Object = template["spec"]
        return pod
    return None


def _set_image(objects: list[Object], image: Object) -> None:
    name = image["name"]
    for obj in objects:
        for container in containers_of(obj):
            current = container.get("image", "")
            bare = current.split("@")[0].rsplit(":", 1)[0] if ":" in current else current
            if bare != name:
                continue
            new = image.get("newName", name)
            tag = image.get("newTag")
            if tag is None and ":" in current:
                tag = current.rsplit(":", 1)[1]
            container["image"] = f"{new}:{tag}" if tag else new
