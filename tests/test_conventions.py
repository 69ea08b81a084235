"""The ecosystem's conventions: the workflow where the catalog looks, an env file --use-conda can
build from its copy, cheap rules local, every GPU rule given its partition under SLURM, SAEs by
their sae-lens release, feature pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from pathreplay.errors import UserError
from pathreplay.report.links import PRESETS, anchor, feature_link, link_templates
from pathreplay.sae.registry import Release, apply_release, read_registry, registry_file, resolve_release

RULES = ROOT / "workflow" / "rules"


def _rules() -> dict[str, str]:
    """rule name -> its text, from every rule file."""
    out = {}
    for f in RULES.glob("*.smk"):
        for m in re.finditer(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", f.read_text(), re.M | re.S):
            out[m.group(1)] = m.group(2)
    return out


def test_the_snakefile_is_where_the_catalog_looks():
    assert (ROOT / "workflow" / "Snakefile").is_file() and not (ROOT / "Snakefile").exists()


def test_the_env_file_builds_from_its_copy(tmp_path):
    # Snakemake copies envs/pathreplay.yaml into .snakemake/conda/ and builds from there: the
    # package must be named by no path relative to the file; the one it names resolves to here
    env = yaml.safe_load((ROOT / "envs" / "pathreplay.yaml").read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert pip == ["${PATHREPLAY_ROOT}"] and not any(".." in p for p in pip)
    copy = tmp_path / ".snakemake" / "conda"
    copy.mkdir(parents=True)
    (copy / "req.txt").write_text("\n".join(pip) + "\n")
    common = (RULES / "common.smk").read_text()
    assert 'os.environ.update(PATHREPLAY_ROOT=str(REPO))' in common
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                        "--no-index", "--report", "-", "-r", "req.txt"], cwd=copy, capture_output=True, text=True,
                       env={**os.environ, "PATHREPLAY_ROOT": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"name": "pathreplay"' in r.stdout


def test_cheap_rules_are_local_and_every_gpu_rule_has_its_partition():
    rules = _rules()
    gpu = {name for name, text in rules.items() if re.search(r"gpu=1", text)}
    assert {"replay_patched", "encode_patched", "mediate", "behaviour_patched", "exp1", "screen"} <= gpu
    local = set(re.search(r"^localrules:\n((?:    \w+,\n)+)", (RULES / "common.smk").read_text(), re.M)
                .group(1).replace(",", "").split())
    assert local and not local & gpu and local <= set(rules) | {"all"}
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_partition"] != "gpu"  # CPU rules stay off the GPU partition
    for name in gpu:
        assert profile["set-resources"][name]["slurm_partition"] == "gpu", name


@pytest.fixture(scope="module")
def registry():
    f = registry_file()
    if f is None:
        pytest.skip("sae-lens is not installed (the test extra installs it)")
    return read_registry(str(f))


def test_a_release_resolves_to_the_folder_template(registry):
    # the same hub folders as the template users write for Llama Scope, and Neuronpedia's ids
    r = resolve_release("llama_scope_lxr_8x", "l{layer}r_8x", [0, 13, 31], registry)
    assert r == Release("fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L{layer}R-8x", "llamascope",
                        {0: "llama3.1-8b/0-llamascope-res-32k", 13: "llama3.1-8b/13-llamascope-res-32k",
                         31: "llama3.1-8b/31-llamascope-res-32k"})
    # and the links the report draws from it are the Neuronpedia preset's
    links = link_templates(None, [13], r.neuronpedia)
    assert feature_link(links, "L13-1234") == PRESETS["neuronpedia-llamascope-8x"].format(layer=13, index=1234)
    saes = {"release": "llama_scope_lxr_8x", "id": "l{layer}r_8x", "layers": [2], "path": "x/{layer}", "format": "saelens"}
    assert apply_release(saes) == {2: "llama3.1-8b/2-llamascope-res-32k"}
    assert saes["path"].endswith("L{layer}R-8x") and saes["format"] == "llamascope"


@pytest.mark.parametrize("release, sae_id, says", [
    ("no_such_release", "l{layer}r_8x", "has no release 'no_such_release'"),
    ("llama_scope_lxr_8x", "l{layer}r_16x", "has no SAE 'l0r_16x'"),
])
def test_a_release_the_registry_lacks_is_one_line(registry, release, sae_id, says):
    with pytest.raises(UserError, match=says):
        resolve_release(release, sae_id, [0], registry)


def test_feature_links_from_a_preset_or_a_template():
    t = link_templates("neuronpedia-llamascope-8x", [2, 3])
    assert feature_link(t, "L2-816") == "https://neuronpedia.org/llama3.1-8b/2-llamascope-res-32k/816"
    own = link_templates("https://example.org/sae/{layer}/{index}", [1])
    assert feature_link(own, "L1-5") == "https://example.org/sae/1/5" and feature_link(own, "L2-5") == ""
    assert anchor(own, "L1-5").startswith('<a href="https://example.org/sae/1/5"') and anchor({}, "L1-5") == "L1-5"
    assert link_templates(None, [1]) == {}
    with pytest.raises(UserError, match="features.links: 'nope' is neither a preset"):
        link_templates("nope", [1])


def test_the_dry_run_ends_with_what_the_run_will_do(tmp_path):
    from test_workflow import SMALL, snakemake

    r = snakemake(tmp_path, "-n", config=SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    tail = r.stdout[r.stdout.rindex("This was a dry-run"):]  # after Snakemake's table of jobs
    for what in ("what this run will do", "model", "SAEs", "task", "prompts", "the demo's own", "features",
                 "conditions", "trials", "writes", "MiB"):
        assert what in tail, what
