"""The glue every workflow script shares: logging to the rule's log file, one-line user errors."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import run_cli

if TYPE_CHECKING:
    from .runtime.model import Device


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


def claim_device(device: Device) -> Any:
    """Claim a GPU slot (unless the config says cpu) and return the torch device to use."""
    from .gpu import acquire_device  # torch only for the scripts that load a model
    from .runtime.model import resolve_device

    if device != "cpu":
        slot = acquire_device()
        logging.getLogger(__name__).info("device slot: %s", slot)
    return resolve_device(device)


def open_model(device: Device, path: str, dtype: str = "float32", trust_remote_code: bool = False
               ) -> tuple[Any, Any]:
    """Claim a device and load the model and tokenizer (config section `model`) onto it."""
    from .runtime.model import load_model

    claim_device(device)
    return load_model(path, dtype, device, trust_remote_code)
