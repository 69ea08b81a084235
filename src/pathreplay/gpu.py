"""Give each concurrently running GPU job its own device on one box.

Snakemake counts `gpu` resources but assigns no device ids, so N jobs started under
`--resources gpu=N` would all land on device 0. Each job takes the first free slot by holding an
exclusive lock on a per-slot file, and sets CUDA_VISIBLE_DEVICES to that slot's device before
CUDA starts. Under SLURM the scheduler already chose the device: its CUDA_VISIBLE_DEVICES stands.
The lock is released by the operating system when the job's process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
_held: list[IO[bytes]] = []  # keep the lock files open for the life of the process


def visible_devices() -> list[str]:
    """Device ids this process may use: PATHREPLAY_GPU_SLOTS (for tests) or what CUDA sees."""
    fake = os.environ.get("PATHREPLAY_GPU_SLOTS")
    if fake:
        return [str(i) for i in range(int(fake))]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA at all
        return []


def acquire_device(lock_dir: str | None = None, wait_s: float = 3600.0) -> str | None:
    """Claim a free device slot, set CUDA_VISIBLE_DEVICES to it, and return its id (None: no GPU)."""
    if os.environ.get("SLURM_JOB_ID") and "PATHREPLAY_GPU_SLOTS" not in os.environ:
        dev = os.environ.get("CUDA_VISIBLE_DEVICES")
        log.info("SLURM job %s: keeping CUDA_VISIBLE_DEVICES=%s", os.environ["SLURM_JOB_ID"], dev)
        return dev
    devices = visible_devices()
    if not devices:
        return None
    folder = Path(lock_dir or os.environ.get("PATHREPLAY_LOCK_DIR")
                  or Path(tempfile.gettempdir()) / f"pathreplay-gpu-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for dev in devices:
            fh = open(folder / f"slot-{dev}.lock", "wb")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            _held.append(fh)
            os.environ["CUDA_VISIBLE_DEVICES"] = dev
            log.info("took GPU slot %s (lock %s)", dev, fh.name)
            return dev
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU slot among {devices} after {wait_s:.0f} s")
        time.sleep(0.5)
