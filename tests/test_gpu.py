"""The lock-file slot allocator gives concurrent GPU jobs distinct devices."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import os, sys, time
from pathreplay.gpu import acquire_device
dev = acquire_device(wait_s=600)
print(dev, time.time(), flush=True)
time.sleep(float(sys.argv[1]))
print(time.time(), flush=True)  # the slot is let go when the process ends, after this
"""


def _spawn(tmp_path, hold: float, extra_env=None):
    env = {**os.environ, "PATHREPLAY_GPU_SLOTS": "2", "PATHREPLAY_LOCK_DIR": str(tmp_path)}
    env.pop("SLURM_JOB_ID", None)
    env.update(extra_env or {})
    return subprocess.Popen([sys.executable, "-c", CHILD, str(hold)], stdout=subprocess.PIPE, text=True, env=env)


def test_two_concurrent_jobs_never_share_a_slot(tmp_path):
    procs = [_spawn(tmp_path, 1.5) for _ in range(2)]
    held = [p.stdout.readline().split() for p in procs]  # both hold a slot before the third starts
    assert sorted(h[0] for h in held) == ["0", "1"]
    third = _spawn(tmp_path, 0.0)
    ends = [float(p.communicate(timeout=600)[0].split()[0]) for p in procs]
    got = third.communicate(timeout=600)[0].split()
    # the third got a slot only once one of the first two was done with it
    assert got[0] in ("0", "1") and float(got[1]) >= min(ends)


def test_slurm_keeps_the_schedulers_device(tmp_path):
    env = {**os.environ, "SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "3", "PATHREPLAY_LOCK_DIR": str(tmp_path)}
    env.pop("PATHREPLAY_GPU_SLOTS", None)
    p = subprocess.run([sys.executable, "-c", CHILD, "0"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.stdout.split()[0] == "3"
    assert not list(tmp_path.glob("slot-*.lock"))
