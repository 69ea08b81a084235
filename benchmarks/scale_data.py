"""Synthetic codes and trial tables of the study's shape for benchmarks/scale.py: Zipf-like
feature activity, trials coupled to their baseline partners as the replay couples them, and a few
planted effects (see scale.py's docstring for the shape and the layout)."""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa

SHARD = "s000"


def conditions(n: int) -> list[str]:
    """n real condition names as config's replay.conditions spells them."""
    base = ["risky_value", "safe_value", "2*risky_value", "2*safe_value", "3*risky_value", "3*safe_value"]
    return base[:n] if n <= len(base) else base + [f"{k}*risky_value" for k in range(4, n - len(base) + 4)]


def inclusion(d_sae: int, l0: int, zipf: float, rng: np.random.Generator) -> np.ndarray:
    """Per-feature activation probabilities, Zipf-like over a random feature order, summing to l0."""
    w = 1.0 / np.arange(1, d_sae + 1) ** zipf
    lo, hi = 0.0, 1e9
    for _ in range(100):  # bisection on the scale c of min(1, c w)
        c = (lo + hi) / 2
        lo, hi = (c, hi) if np.minimum(1, c * w).sum() < l0 else (lo, c)
    return np.minimum(1, hi * w)[rng.permutation(d_sae)]


def draw(n: int, prob: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n independent active sets: (trial index, feature) of every active entry, Bernoulli(prob)."""
    rows, feats = [], []
    step = max(1, 2**24 // len(prob))
    for a in range(0, n, step):
        hit = np.nonzero(rng.random((min(step, n - a), len(prob)), dtype=np.float32) < prob)
        rows.append(hit[0] + a)
        feats.append(hit[1])
    return np.concatenate(rows), np.concatenate(feats)


def values(k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.lognormal(-1.0, 1.0, k).astype(np.float32)


class Sparse:
    """Entries (trial, feature, value) of a set of trials, trial-major."""

    def __init__(self, t: np.ndarray, f: np.ndarray, v: np.ndarray) -> None:
        self.t, self.f, self.v = t.astype(np.int64), f.astype(np.int64), v.astype(np.float32)

    def take(self, trials: np.ndarray) -> Sparse:
        """The entries of `trials` (indices into this set), renumbered 0..len(trials) - 1."""
        order = np.argsort(self.t, kind="stable")
        t = self.t[order]
        starts, ends = np.searchsorted(t, trials), np.searchsorted(t, trials, side="right")
        lens = ends - starts
        idx = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
        return Sparse(np.repeat(np.arange(len(trials)), lens), self.f[order][idx], self.v[order][idx])


def perturb(s: Sparse, keep: float, noise: float, prob: np.ndarray, rng: np.random.Generator,
            n: int) -> Sparse:
    """Partners of s's n trials: each entry kept with probability `keep`, its value moved by a
    log-normal factor; new entries (Bernoulli(prob * (1 - keep))) replace what was dropped."""
    k = rng.random(len(s.t)) < keep
    t, f = s.t[k], s.f[k]
    v = s.v[k] * np.exp(rng.normal(0, noise, k.sum())).astype(np.float32)
    nt, nf = draw(n, prob * (1 - keep), rng)
    return dedupe(Sparse(np.r_[t, nt], np.r_[f, nf], np.r_[v, values(len(nt), rng)]))


def dedupe(s: Sparse) -> Sparse:
    key = s.t * (1 << 20) + s.f
    _, first = np.unique(key, return_index=True)
    return Sparse(s.t[first], s.f[first], s.v[first])


def plant(s: Sparse, n: int, targets: np.ndarray, effect: float) -> Sparse:
    """Add `effect` to the planted target features of every trial (activating them)."""
    t = np.repeat(np.arange(n), len(targets))
    f = np.tile(targets, n)
    e = Sparse(np.r_[s.t, t], np.r_[s.f, f], np.r_[s.v, np.full(len(t), effect, np.float32)])
    key = e.t * (1 << 20) + e.f
    u, inv = np.unique(key, return_inverse=True)
    return Sparse(u >> 20, u & ((1 << 20) - 1), np.bincount(inv, e.v).astype(np.float32))


def codes_table(gen: Sparse, last: Sparse) -> pa.Table:
    """One file's code rows: the union of each trial's generated-mean and last-position entries."""
    t = np.r_[gen.t, last.t]
    key = t * (1 << 20) + np.r_[gen.f, last.f]
    u, inv = np.unique(key, return_inverse=True)
    g = np.bincount(inv, np.r_[gen.v, np.zeros(len(last.t), np.float32)], len(u))
    la = np.bincount(inv, np.r_[np.zeros(len(gen.t), np.float32), last.v], len(u))
    return pa.table({"row": (u >> 20).astype(np.int32), "feature": (u & ((1 << 20) - 1)).astype(np.int32),
                     "last": la.astype(np.float32), "gen": g.astype(np.float32)})


def trial_tables(a: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The source's patched trials (one shard) and each prompt's baseline trials, with `row`:
    blocks of (condition, run), each prompt x trial."""
    conds = conditions(a.conditions)
    blocks = [(c, r) for c in conds + ["sham"] + [f"random:{c}" for c in conds] for r in ("generated", "forced")]
    pt = [(f"p{p}", t) for p in range(a.prompts) for t in range(a.trials)]
    rows = [(c, r, p, t) for c, r in blocks for p, t in pt]
    patched = pd.DataFrame(rows, columns=["condition", "run", "prompt_id", "trial"]).assign(
        feature=f"L{a.source_layer}-{a.source_feature}", layer=a.source_layer, feature_id=a.source_feature,
        n_positions=1)  # every trial kept a generated position
    patched["row"] = np.arange(len(patched))
    base = {}
    for p in range(a.prompts):
        b = pd.DataFrame({"condition": ["baseline"] * a.trials + ["placebo"] * a.trials, "run": "generated",
                          "prompt_id": f"p{p}", "trial": list(range(a.trials)) * 2})
        base[f"p{p}"] = b.assign(row=np.arange(len(b)), n_positions=1)
    return patched, base


def planted_targets(a: argparse.Namespace) -> dict[int, np.ndarray]:
    """A handful of (layer, feature) targets downstream of the source that the real conditions move."""
    rng = np.random.default_rng(a.seed + 7)
    down = list(range(a.source_layer + 1, a.layers))
    out: dict[int, list[int]] = {}
    for _ in range(a.planted if down else 0):
        out.setdefault(int(rng.choice(down)), []).append(int(rng.integers(a.d_sae)))
    return {k: np.unique(v) for k, v in out.items()}


def layer_codes(a: argparse.Namespace, layer: int, patched: pd.DataFrame, planted: np.ndarray
                ) -> dict[str, pa.Table]:
    """Every part's code rows at one layer."""
    rng = np.random.default_rng([a.seed, layer])
    pg, pl = inclusion(a.d_sae, a.l0_gen, a.zipf, rng), inclusion(a.d_sae, a.l0_last, a.zipf, rng)
    P, T = a.prompts, a.trials
    bt, bf = draw(P * T, pg, rng)
    base = Sparse(bt, bf, values(len(bt), rng))
    qt, qf = draw(P * T, pg, rng)
    placebo = Sparse(qt, qf, values(len(qt), rng))
    lt, lf = draw(P, pl, rng)
    blast = Sparse(lt, lf, values(len(lt), rng))
    out = {}
    for p in range(P):
        own = np.arange(p * T, (p + 1) * T)
        g = base.take(own)
        q = placebo.take(own)
        gen = Sparse(np.r_[g.t, q.t + T], np.r_[g.f, q.f], np.r_[g.v, q.v])
        out[f"baseline/p{p}"] = codes_table(gen, blast.take(np.full(2 * T, p)))
    gens, lasts, offset = [], [], 0
    partner = np.arange(P * T)
    prompt_of = np.repeat(np.arange(P), T)
    down = layer >= a.source_layer
    for (cond, run), _ in patched.groupby(["condition", "run"], sort=False):
        n = P * T
        real = cond not in ("sham",) and not cond.startswith("random:")
        if cond == "sham" or (not down and run == "forced"):
            g, la = base.take(partner), blast.take(prompt_of)
        else:
            keep, noise = (0.97, 0.05) if run == "forced" else (0.7, 0.3)
            g = perturb(base.take(partner), keep, noise, pg, rng, n)
            cl = blast if not down else perturb(blast, 0.9, 0.1, pl, np.random.default_rng([a.seed, layer, zlib.crc32(cond.encode())]), P)
            la = cl.take(prompt_of)
            if real and len(planted):
                g, la = plant(g, n, planted, a.effect), plant(la, n, planted, a.effect)
        gens.append(Sparse(g.t + offset, g.f, g.v))
        lasts.append(Sparse(la.t + offset, la.f, la.v))
        offset += n
    cat = lambda xs: Sparse(*(np.concatenate([getattr(x, k) for x in xs]) for k in "tfv"))
    out[f"patched/{SHARD}"] = codes_table(cat(gens), cat(lasts))
    return out
