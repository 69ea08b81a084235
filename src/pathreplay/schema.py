"""The config schema (`workflow/schemas/config.schema.yaml`): the one source of every key's
default, and its errors as one line."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .errors import first_line

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@cache
def schema() -> dict[str, Any]:
    """The parsed schema."""
    return yaml.safe_load(SCHEMA.read_text())


def defaults(section: str) -> dict[str, Any]:
    """The schema's default of every key of one config section that has one."""
    props = schema()["properties"][section]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def schema_message(err: BaseException) -> str:
    """Snakemake's report of a config that breaks the schema, as one line: the key and what is wrong."""
    cause = err.__cause__ or err.__context__  # snakemake raises while handling jsonschema's error
    if hasattr(cause, "absolute_path") and hasattr(cause, "message"):
        key = ".".join(map(str, cause.absolute_path)) or "(top level)"
        return f"config {key}: {cause.message}; see config/README.md for what it takes"
    return first_line(err)
