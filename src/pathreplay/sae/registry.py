"""SAEs by their sae-lens release (config `saes.release`, `saes.id` with `{layer}`): resolved
through the registry sae-lens ships (`pretrained_saes.yaml`, read as a file: the package is not
imported) to the hub folder template the SAE loaders already read, the format of its files, and
each layer's Neuronpedia id (which the report's feature links use). Nothing is downloaded here."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ..errors import fail

# sae-lens's conversion function of a release -> the reader here that reads its files as they are
FORMATS = {"llama_scope": "llamascope", None: "saelens", "gemma_2": "gemmascope"}


class Release(NamedTuple):
    """A release's SAEs as the config names them: a folder template with {layer}, a format, and
    each layer's Neuronpedia id."""

    path: str
    format: str
    neuronpedia: dict[int, str]


def registry_file() -> Path | None:
    """sae-lens's pretrained_saes.yaml where sae-lens is installed (found, not imported)."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    return f if f.is_file() else None


@cache
def read_registry(path: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


def _template(paths: Mapping[int, str]) -> str | None:
    """The one template T with T.format(layer=l) == paths[l] for every layer (None if none is)."""
    first, path = next(iter(paths.items()))
    token = str(first)
    at = [i for i in range(len(path)) if path.startswith(token, i)]
    for i in at:
        t = path[:i] + "{layer}" + path[i + len(token):]
        if all(t.replace("{layer}", str(layer)) == p for layer, p in paths.items()):
            return t
    return None


def resolve_release(release: str, sae_id: str, layers: Sequence[int], registry: Mapping[str, Any] | None = None
                    ) -> Release:
    """The folder template, format and Neuronpedia ids of `release`'s SAEs `sae_id` (with
    {layer}) at `layers`; one line for a release, id or layer the registry does not have."""
    if registry is None:
        f = registry_file()
        if f is None:
            fail("saes.release", f"{release!r} is looked up in sae-lens's registry, and sae-lens is not installed",
                 "pip install -e '.[saelens]', or give saes.path and saes.format")
        registry = read_registry(str(f))
    entry = registry.get(release)
    if entry is None:
        near = sorted(k for k in registry if release.split("_")[0] in k)[:6]
        fail("saes.release", f"sae-lens's registry has no release {release!r}", f"use one it has (e.g. {near})")
    by_id = {s["id"]: s for s in entry.get("saes", [])}
    paths, neuronpedia = {}, {}
    for layer in layers:
        want = sae_id.replace("{layer}", str(layer))
        if want not in by_id:
            fail("saes.id", f"release {release!r} has no SAE {want!r} (layer {layer})",
                 f"use ids like {sorted(by_id)[:3]}, with {{layer}} where the layer goes")
        paths[layer] = f"{entry['repo_id']}/{by_id[want]['path']}"
        if by_id[want].get("neuronpedia"):
            neuronpedia[layer] = by_id[want]["neuronpedia"]
    template = _template(paths)
    if template is None:
        fail("saes.release", f"the SAEs of {release!r} at layers {list(layers)} follow no one folder template",
             "give saes.path (a template with {layer}) and saes.format instead")
    conv = entry.get("conversion_func")
    if conv not in FORMATS:
        fail("saes.release", f"release {release!r} is stored as {conv!r}, which pathreplay does not read",
             f"use a release stored as one of {sorted(k for k in FORMATS if k)} or as sae-lens's own files")
    return Release(template, FORMATS[conv], neuronpedia)


def apply_release(saes: dict[str, Any]) -> dict[int, str]:
    """With `release` set, fill the config section's `path` and `format` from the registry (in
    place) and return the layers' Neuronpedia ids; otherwise return none."""
    if not saes.get("release"):
        if not saes.get("path") or not saes.get("format"):
            fail("saes", "neither a release nor a folder template is given", "set saes.release and saes.id, or "
                 "saes.path and saes.format")
        return {}
    if not saes.get("id"):
        fail("saes.id", "a release needs the id of its SAEs", "set saes.id, e.g. l{layer}r_8x")
    r = resolve_release(saes["release"], saes["id"], saes["layers"])
    saes["path"], saes["format"] = r.path, r.format
    return r.neuronpedia
