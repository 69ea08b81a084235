"""The glue every workflow script shares: logging to the rule's log file, one-line user errors."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import fail, run_cli

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
    run_cli(lambda: (check_inputs(list(snakemake.input)), main(snakemake)))


def _whole(path: Path) -> str | None:
    """What is wrong with a file the workflow wrote (None: it reads whole): a Parquet footer and
    schema, a safetensors header and every tensor's extent, a TSV's header and fields per row."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.ParquetFile(path).schema_arrow  # noqa: B018 - reading the footer is the check
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    f.get_slice(k).get_shape()
        elif path.suffix == ".tsv":
            with open(path, encoding="utf-8", newline="") as fh:
                text = fh.read()
            if text and not text.endswith("\n"):
                return "ends in the middle of a row"
            rows = csv.reader(text.splitlines(keepends=True), delimiter="\t", strict=True)  # quoted: tabs, newlines
            width = len(next(rows, []))
            for row in rows:
                if len(row) != width:
                    return f"row {rows.line_num} has {len(row)} fields, the header {width}"
    except Exception as err:  # noqa: BLE001 - pyarrow, safetensors and the codecs raise many types
        first = str(err).splitlines()[0] if str(err) else ""
        return f"cannot be read whole ({type(err).__name__}: {first})"
    return None


def _made_here(path: Path) -> bool:
    """Whether the workflow wrote the file: it is under results/ of the working directory."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).parts[:1] == ("results",)
    except ValueError:
        return False


def check_inputs(paths: list[str]) -> None:
    """Every input a job reads, checked before it reads any: a corrupt one (a job killed while a
    disk filled, a copy cut short) is one line. One the workflow made is removed too, so that the
    next plain run makes it again (the default target names every file the run is made from); a
    file of the user's is left as it is."""
    for p in map(Path, paths):
        why = _whole(p) if p.is_file() else None
        if why is None:
            continue
        if _made_here(p):
            p.unlink(missing_ok=True)
            fail(str(p), f"{why}; removed it", "run snakemake again: it is made anew, and what reads it")
        fail(str(p), why, "replace the file with a whole copy")


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
        if slot is not None:  # None: no GPU here, or the scheduler's
            logging.getLogger(__name__).info("device slot: %s", slot)
    return resolve_device(device)


def open_model(device: Device, path: str, dtype: str = "float32", trust_remote_code: bool = False
               ) -> tuple[Any, Any]:
    """Claim a device and load the model and tokenizer (config section `model`) onto it."""
    from .runtime.model import load_model

    claim_device(device)
    return load_model(path, dtype, device, trust_remote_code)
