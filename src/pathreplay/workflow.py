"""The glue every workflow script shares: logging to the rule's log file, one-line user errors."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import run_cli


def run_script(snakemake: Any, main: Callable[[Any], None]) -> None:
    """Run main(snakemake) with logging and progress bars sent to the rule's log file."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        log_file = open(log_path, "w", buffering=1)
        handlers.append(logging.StreamHandler(log_file))
        sys.stderr = _Tee(sys.stderr, log_file)  # tqdm progress lands in the log as well
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _remove_stale_partials(list(snakemake.output))
    threads = getattr(snakemake, "threads", None)
    if threads and "torch" in sys.modules:  # scripts that need no torch never pay its import
        sys.modules["torch"].set_num_threads(int(threads))
    run_cli(lambda: main(snakemake))


def _remove_stale_partials(outputs: list[str]) -> None:
    """A job killed while writing leaves hidden `.name.*.partial` files; its rerun removes them."""
    for out in map(Path, outputs):
        for stale in out.parent.glob(f".{out.name}.*.partial") if out.parent.exists() else []:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


class _Tee:
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()

    def isatty(self) -> bool:
        return False


def claim_device(device: str) -> Any:
    """Claim a GPU slot (unless the config says cpu) and return the torch device to use."""
    from .gpu import acquire_device
    from .model import resolve_device

    if device != "cpu":
        slot = acquire_device()
        logging.getLogger(__name__).info("device slot: %s", slot)
    return resolve_device(device)


def open_model(params: Any) -> tuple[Any, Any]:
    """Claim a device and load the configured model and tokenizer onto it."""
    from .model import load_model

    claim_device(params.device)
    m = params.model
    return load_model(m["path"], m["dtype"], params.device, m.get("trust_remote_code", False))


def replay_settings(params: Any, section: str = "replay") -> Any:
    """ReplaySettings from a rule's params (the `replay` section, or the screen's overrides)."""
    from .plan import CaptureSpec
    from .replay import ReplaySettings

    r = params.replay
    if section == "screen":
        s = params.screen
        return ReplaySettings(s["max_new_tokens"], r["temperature"], r["batch_size"], (),
                              CaptureSpec("first", 0), params.parser, r["mode"], r["positions"], 0,
                              r["engine"])
    return ReplaySettings(r["max_new_tokens"], r["temperature"], r["batch_size"],
                          tuple(params.saes["layers"]), CaptureSpec.parse(r["capture"]["generated"]),
                          params.parser, r["mode"], r["positions"], r["top_logits"], r["engine"])


def feature_slices(saes: dict[str, Any], table: Any, device: Any) -> dict[str, tuple[int, Any]]:
    """name -> (block, feature slice) for every row of a table with layer and feature_id."""
    from .errors import fail
    from .plan import feature_name
    from .sae import load_feature, sae_dir

    out = {}
    for row in table.itertuples():
        layer = int(row.layer)
        name = feature_name(layer, row.feature_id)
        feat = load_feature(sae_dir(saes["path"], layer), saes["format"], layer, int(row.feature_id), device)
        if feat.gain < 0.05:
            # Moving along the decoder row barely moves (or lowers) what the encoder reads: a clamp
            # along it would need an enormous step. This is a broken or mismatched SAE.
            fail(f"saes.path={saes['path']!r}", f"feature {name}'s encoder reads its own decoder row at "
                 f"gain {feat.gain:.3g}", "check saes.format and the SAE files")
        out[name] = (layer, feat)
    return out
