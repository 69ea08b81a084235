"""Where a feature's own page is: a URL per feature, from a template per layer (config
`features.links`: a preset's name or a template with `{layer}` and `{index}`; or, with
`saes.release` set, each layer's Neuronpedia id from the sae-lens registry)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import fail
from ..features import parse_feature_name

NEURONPEDIA = "https://neuronpedia.org/{source}/{index}"
# Llama Scope's L{l}R reads blocks.{l}.hook_resid_post, which Neuronpedia names {l}-llamascope-res-<width>
PRESETS = {
    "neuronpedia-llamascope-8x": "https://neuronpedia.org/llama3.1-8b/{layer}-llamascope-res-32k/{index}",
    "neuronpedia-llamascope-32x": "https://neuronpedia.org/llama3.1-8b/{layer}-llamascope-res-131k/{index}",
}

Links = Mapping[int, str]  # layer -> URL template with {index}


def link_templates(spec: str | None, layers: Sequence[int], neuronpedia: Mapping[int, str] | None = None) -> dict:
    """Per layer, the URL template of its features' pages: from `spec` (a preset's name, or a
    template with {layer} and {index}); else from the layers' Neuronpedia ids (saes.release);
    else none."""
    if spec:
        template = PRESETS.get(spec, spec)
        if "{index}" not in template:
            fail("features.links", f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a template with {{index}}",
                 "name a preset or write a URL with {layer} and {index}")
        return {layer: template.replace("{layer}", str(layer)) for layer in layers}
    if neuronpedia:
        return {layer: NEURONPEDIA.replace("{source}", src) for layer, src in neuronpedia.items()}
    return {}


def feature_link(links: Links, name: str) -> str:
    """The page of the feature named `name` (L<layer>-<index>), or "" where its layer has none."""
    parsed = parse_feature_name(name)
    if parsed is None or parsed[0] not in links:
        return ""
    return links[parsed[0]].replace("{index}", str(parsed[1]))


def anchor(links: Links, name: str) -> str:
    """The feature's name as an HTML link to its page (the name alone where there is none)."""
    url = feature_link(links, name)
    return f'<a href="{url}" target="_blank" rel="noopener">{name}</a>' if url else name
