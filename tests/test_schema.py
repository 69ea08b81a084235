"""The config schema: defaults read from it, and its errors as one line."""

from __future__ import annotations

import pytest
import yaml

from conftest import ROOT
from pathreplay.schema import SCHEMA, defaults, schema_message


def test_schema_is_the_workflows():
    assert SCHEMA == ROOT / "workflow" / "schemas" / "config.schema.yaml"
    assert defaults("stats") == {"alpha": 0.05, "min_delta": 0.05, "min_prompts": 2, "max_chains": 50,
                                "max_mediators": 256, "placebo_splits": 20,
                                "placebo_calibration_splits": 200, "placebo_fwer": 0.025}
    assert defaults("replay")["mode"] == "decoder" and "conditions" in defaults("replay")


def test_every_words_default_is_also_in_the_demo_config_or_left_out():
    # config.yaml may restate a default for the reader, but never with another value
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["words"]
    d = defaults("words")
    assert {k: v for k, v in demo.items() if k in d and d[k] != v} == {}


def test_schema_error_becomes_one_line():
    import jsonschema
    from snakemake.exceptions import WorkflowError


    def validate():  # as snakemake.utils.validate reports it
        try:
            jsonschema.validate({"model": {"dtype": "x"}},
                                {"properties": {"model": {"properties": {"dtype": {"enum": ["float32"]}}}}})
        except jsonschema.ValidationError as e:
            raise WorkflowError("Error validating config file.", e)

    with pytest.raises(WorkflowError) as err:
        validate()
    msg = schema_message(err.value)
    assert msg == "config model.dtype: 'x' is not one of ['float32']; see config/README.md for what it takes"


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    props = node.get("properties")
    if not props:
        return [prefix]
    return [k for name, sub in props.items() for k in leaf_keys(sub, f"{prefix}.{name}" if prefix else name)]


def test_config_readme_explains_every_key():
    # the words section has its own table, keyed without the `words.` prefix
    text = (ROOT / "config" / "README.md").read_text()
    words = text[text.index("## `words`"):]
    keys = leaf_keys(yaml.safe_load(SCHEMA.read_text()))
    assert len(keys) > 60
    missing = [k for k in keys if f"`{k}`" not in text and not (k.startswith("words.")
                                                                 and f"| `{k.removeprefix('words.')}` |" in words)]
    assert missing == []
