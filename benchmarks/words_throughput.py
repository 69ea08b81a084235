"""Throughput and peak memory of the word analysis on synthetic Exp2 logs.

Writes N synthetic trials (original Exp2 layout: feature, condition, trial, response) as JSONL,
then, in a fresh child process, streams them through counting and the statistics. Prints a
table: trials/s of the counting pass and of the whole run, and the child's peak RSS.

    PYTHONPATH=src .venv/bin/python benchmarks/words_throughput.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

CONDITIONS = ("safe_baseline", "safe_with_safe_patch", "safe_with_risky_patch",
              "risky_baseline", "risky_with_safe_patch", "risky_with_risky_patch")
TAILS = (
    "Current balance: ${b}\nCurrent round: {r}\n", "Round {r}: Bet ${a}, Win, Balance ${b}\n",
    "Round {r}: Bet ${a}, Loss, Balance ${b}\n", "You won ${w}. New balance: ${b}\n", "The game is over.\n",
    "Game history:\n", "Result: Win\nTotal: ${b}\n", "You lost. Your current balance is ${b}.\n",
    "Choose:\n1) Bet $10\n2) Stop\n\nChoice: {c}\n", "The machine is spinning. Wait for the result...\n",
    "I will keep playing because the slot machine may have hidden patterns.\n", "You chose to stop.\n",
)


def synthetic(n: int, path: Path, seed: int = 0, trials_per_condition: int = 42) -> int:
    """Write n trials; every 10th feature shifts its stop rate and wording under patches."""
    rng = np.random.default_rng(seed)
    n_features = max(1, n // (len(CONDITIONS) * trials_per_condition))
    written = 0
    with open(path, "w") as fh:
        while written < n:
            f = (written // (len(CONDITIONS) * trials_per_condition)) % n_features
            layer, fid = 1 + f % 31, (f * 7919) % 32768
            causal = f % 10 == 0
            for cond in CONDITIONS:
                risky = cond.startswith("risky")
                p_stop = 0.3 + (0.3 if causal and cond.endswith("safe_patch") else 0.0)
                for t in range(trials_per_condition):
                    if written >= n:
                        break
                    if rng.random() < p_stop:
                        text = "2\n"
                    else:
                        amount = int(rng.choice([5, 10, 20, 50, 100])) if risky else 10
                        text = f"1\nAmount: ${amount}\n" if risky else "1\n"
                    for tail in rng.choice(len(TAILS), int(rng.integers(0, 5))):
                        text += TAILS[tail].format(b=int(rng.integers(0, 300)), r=int(rng.integers(1, 9)),
                                                   a=int(rng.integers(5, 101)), w=int(rng.integers(5, 301)),
                                                   c=int(rng.integers(1, 3)))
                    if causal and cond.endswith("risky_patch") and rng.random() < 0.4:
                        text += "Feeling lucky, going all in!\n"
                    fh.write(json.dumps({"feature": f"L{layer}-{fid}", "condition": cond, "trial": t,
                                         "response": text}) + "\n")
                    written += 1
    return written


def _child(path: str, chunk: int, queue: mp.Queue) -> None:
    from pathreplay.study.task import SLOT_MACHINE
    from pathreplay.words.counts import count_logs
    from pathreplay.words.effects import word_effects
    from pathreplay.words.settings import words_config

    cfg = words_config({"logs": [path], "chunk_rows": chunk})
    t0 = time.perf_counter()
    counts = count_logs(cfg.logs, cfg, SLOT_MACHINE.answer_end)
    t1 = time.perf_counter()
    effects = word_effects(counts, cfg)
    t2 = time.perf_counter()
    queue.put((int(counts.groups.n.sum()), t1 - t0, t2 - t0, len(effects), int((effects.q_value < 0.05).sum())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic trials (default 1,000,000)")
    ap.add_argument("--chunk", type=int, default=20_000, help="trials per streamed chunk")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.jsonl"
        synthetic(args.n, path)
        size = path.stat().st_size / 2**20
        ctx = mp.get_context("spawn")  # a fresh process, so peak RSS is the analysis' own
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(str(path), args.chunk, queue))
        proc.start()
        trials, t_count, t_total, rows, sig = queue.get()
        proc.join()
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("| trials | input MiB | count trials/s | total trials/s | total s | peak RSS MiB | rows tested | q<0.05 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {trials:,} | {size:,.0f} | {trials / t_count:,.0f} | {trials / t_total:,.0f} | {t_total:,.1f} "
          f"| {peak:,.0f} | {rows:,} | {sig:,} |")


if __name__ == "__main__":
    main()
