"""A source's predictions: every downstream target's predicted change under each real condition
and its controls, per variant, and the predicted indirect share of its mediated chains.

Rows are (baseline trial, patch) pairs: each trial of the source's prompts that keeps a generated
position (the effects' `forced` pairs), under each real condition c (v = scale x the feature
table's column), its `random:c` control and the `sham`. Per batch of rows, one teacher-forced
pass per variant that runs the blocks (attribution.tangent: `frozen`, `jacobian`); `virtual` runs
none. Every target's prediction is the mean over the condition's trials of its per-trial mean
over kept positions (attribution.readout), the effects' `delta` of the forced scope:
    passthrough, computed, total = passthrough + computed (recomputed);
    passthrough_gated, computed_gated, total_gated (gated).
The sham's step is 0, so every prediction of it is exactly 0 (checked: otherwise the job stops).

Shares: for a mediated chain A -> M -> C (pathways.mediation), the pass is run again with M held
(attribution.seeds.hold) and C read alone: direct = C's predicted change with M held, total = its
predicted change without, share = 1 - direct / total, in each readout."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..errors import fail
from ..replay.coupled import random_direction
from ..replay.plan import CaptureSpec, Condition, random_condition
from ..runtime.patch import Mode, Positions
from ..sae.exact import SAE, Feature
from .readout import read_layer
from .seeds import Seed, hold, patch_steps
from .sequences import Forced, forced_batch, prompt_ids
from .tangent import VARIANTS, Method, push

PRED_COLUMNS = ["source_layer", "source_feature", "condition", "control", "variant", "target_layer", "target_feature",
                "passthrough", "computed", "total", "passthrough_gated", "computed_gated", "total_gated", "active",
                "n_trials"]
SHARE_COLUMNS = ["source", "condition", "mediator", "c", "variant", "readout", "total", "direct", "share", "n_trials"]
VALUES = ("passthrough", "computed", "passthrough_gated", "computed_gated", "active")


class AttributionSettings(NamedTuple):
    """The replay's settings a prediction follows, and attribution's own (config `attribution`)."""

    mode: Mode = "decoder"
    positions: Positions = "exp2"
    capture: str = "all"
    max_new_tokens: int = 12
    batch_size: int = 64
    method: Method = "jvp"
    variants: tuple[str, ...] = VARIANTS


class Source(NamedTuple):
    """A source feature: its name, block and slice, each real condition's target and its random
    control's direction."""

    name: str
    block: int
    feature: Feature
    values: dict[str, float]
    directions: dict[str, torch.Tensor]


def source_of(name: str, block: int, feature: Feature, row: object, conditions: Sequence[Condition],
              seed: int) -> Source:
    """A Source from its feature-table row under the replay's conditions and seed."""
    values = {c.name: c.scale * float(getattr(row, c.column)) for c in conditions}
    return Source(name, block, feature, values,
                  {c.name: random_direction(feature, seed, name, c.name) for c in conditions})


def seeds_of(src: Source) -> list[Seed]:
    """Every patch a trial gets: each real condition, its random control, the sham."""
    out = []
    for c, v in src.values.items():
        out += [Seed(c, "real", v), Seed(random_condition(c), "random", v, src.directions[c])]
    return out + [Seed("sham", "sham", math.nan)]


def kept_trials(baseline: pd.DataFrame) -> pd.DataFrame:
    """The baseline trials (generated runs) that keep a generated position: the forced pairs."""
    b = baseline[(baseline["condition"] == "baseline") & (baseline["run"] == "generated")]
    return b[b["n_positions"] > 0].sort_values(["prompt_id", "trial"]).reset_index(drop=True)


class _Rows(NamedTuple):
    trials: pd.DataFrame  # one row per (trial, seed)
    seeds: list[Seed]


def _chunks(trials: pd.DataFrame, seeds: Sequence[Seed], size: int) -> list[_Rows]:
    rows = [(i, s) for i in range(len(trials)) for s in seeds]
    out = []
    for a in range(0, len(rows), max(1, size)):
        part = rows[a: a + size]
        out.append(_Rows(trials.iloc[[i for i, _ in part]].reset_index(drop=True), [s for _, s in part]))
    return out


def _batch(tok: object, rows: _Rows, texts: Mapping[str, str], ids: Mapping[str, list[int]],
           s: AttributionSettings, device: torch.device) -> Forced:
    keep = CaptureSpec.parse(s.capture).positions(s.max_new_tokens)
    t = rows.trials
    return forced_batch([ids[texts[p]] for p in t["prompt_id"]], [list(x) for x in t["tokens"]], s.positions, keep,
                        t["n_positions"].tolist(), int(tok.pad_token_id)).to(device)  # type: ignore[attr-defined]


class Prediction(NamedTuple):
    """A source's predictions (PRED_COLUMNS, non-zero rows), its shares (SHARE_COLUMNS) and the
    cost: forced passes run and (trial, patch) rows pushed."""

    table: pd.DataFrame
    shares: pd.DataFrame
    passes: int
    rows: int


def _variant_method(variant: str, method: Method) -> Method:
    return method if variant == "jacobian" else "jvp"


def predict_source(model: object, tok: object, src: Source, baseline: pd.DataFrame, texts: Mapping[str, str],
                   saes: Mapping[int, SAE], s: AttributionSettings,
                   chains: Sequence["ChainHold"] = ()) -> Prediction:
    """Every prediction of `src` on the layers of `saes` above its block (module docstring), from
    its prompts' baseline trials (`texts`: prompt id -> text), and the shares of `chains`."""
    dev = next(model.parameters()).device  # type: ignore[attr-defined]
    trials = kept_trials(baseline)
    ids = prompt_ids(tok, [texts[p] for p in trials["prompt_id"].unique()])
    layers = sorted(b for b in saes if b > src.block)
    seeds = seeds_of(src)
    ran = [v for v in s.variants if v != "virtual"] or ["jacobian"]  # virtual alone still needs the states
    sums: dict[tuple[str, str, int], dict[str, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    passes = 0
    for rows in _chunks(trials, seeds, s.batch_size):
        batch = _batch(tok, rows, texts, ids, s, dev)
        conds = [x.condition for x in rows.seeds]
        for c in conds:
            counts[c] = counts.get(c, 0) + 1
        for v in ran:
            pushed = push(model, batch, src.block, lambda h: patch_steps(src.feature, src.block, s.mode, h, rows.seeds,
                                                                      batch.patched), layers, v,  # type: ignore[arg-type]
                          _variant_method(v, s.method))
            passes += pushed.passes
            for layer in layers:
                got = read_layer(saes[layer], pushed.states[layer], pushed.tangents[layer], pushed.seed, batch.kept)
                names = [v] + (["virtual"] if v == ran[0] and "virtual" in s.variants else [])
                for name in names:
                    for c in sorted(set(conds)):
                        at = torch.tensor([i for i, x in enumerate(conds) if x == c], device=dev)
                        acc = sums.setdefault((name, c, layer), {})
                        for k in VALUES:
                            val = got[k][at].sum(0)
                            if name == "virtual" and k in ("computed", "computed_gated"):
                                val = torch.zeros_like(val)
                            acc[k] = acc.get(k, 0) + val
    table = _table(src, sums, counts, s.variants)
    sham = table[table["condition"] == "sham"]
    if len(sham):
        fail(f"attribute {src.name}", f"the sham patch predicts {len(sham)} non-zero changes; its step is 0",
             "report this line: the attribution machinery moved what the patch did not")
    shares, held = predict_shares(model, tok, src, trials, texts, ids, s, chains, table)
    return Prediction(table, shares, passes + held, len(trials) * len(seeds))


def _table(src: Source, sums: Mapping[tuple[str, str, int], Mapping[str, torch.Tensor]], counts: Mapping[str, int],
           variants: Sequence[str]) -> pd.DataFrame:
    """The sums as PRED_COLUMNS rows, non-zero predictions only, variants in `variants`' order."""
    frames = []
    for (variant, cond, layer), acc in sorted(sums.items(), key=lambda kv: (list(variants).index(kv[0][0]),
                                                                            kv[0][1], kv[0][2])):
        n = counts[cond]
        m = {k: (acc[k] / n).cpu().numpy() for k in VALUES}
        m["total"] = m["passthrough"] + m["computed"]
        m["total_gated"] = m["passthrough_gated"] + m["computed_gated"]
        keep = np.flatnonzero(np.any([m[k] != 0 for k in ("passthrough", "computed", "passthrough_gated",
                                                            "computed_gated")], axis=0))
        control = "sham" if cond == "sham" else "random" if cond.startswith("random:") else "real"
        frames.append(pd.DataFrame({
            "source_layer": src.block, "source_feature": src.feature.index, "condition": cond, "control": control,
            "variant": variant, "target_layer": layer, "target_feature": keep.astype(np.int32),
            **{k: m[k][keep] for k in PRED_COLUMNS[7:14]}, "n_trials": n}))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[PRED_COLUMNS] if frames else pd.DataFrame(columns=PRED_COLUMNS)


class ChainHold(NamedTuple):
    """A mediator of the source's mediated chains under one condition, and the chains' ends."""

    condition: str
    mediator: str
    block: int
    feature: Feature
    ends: tuple[tuple[str, int, Feature], ...]


def _end_sums(f: Feature, h: torch.Tensor, tau: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C's recomputed and gated change per row, [B]: the means over kept positions of
    f_C(h + tau) - f_C(h) and 1[f_C(h) != 0] w_C . tau."""
    f = f._replace(w=f.w.to(h.device, torch.float32))
    base = f.value(h)
    rec = f.value(h + tau) - base
    gated = (base != 0).float() * (tau.float() @ f.w)
    n = kept.sum(1).clamp(min=1)
    return (rec * kept).sum(1).double() / n, (gated * kept).sum(1).double() / n


def predict_shares(model: object, tok: object, src: Source, trials: pd.DataFrame, texts: Mapping[str, str],
                   ids: Mapping[str, list[int]], s: AttributionSettings, chains: Sequence[ChainHold],
                   table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """SHARE_COLUMNS rows of every (chain hold, end, variant that runs blocks, readout), and the
    passes run: each end's direct change with the mediator held over its predicted total."""
    dev = next(model.parameters()).device  # type: ignore[attr-defined]
    rows_out, passes = [], 0
    ran = [v for v in s.variants if v != "virtual"]
    by = table.set_index(["variant", "condition", "target_layer", "target_feature"]) if len(table) else None
    for ch in chains:
        seed = [Seed(ch.condition, "real", src.values[ch.condition])]
        ends = [e for e in ch.ends if e[1] > ch.block]
        if not ends:
            continue
        read = sorted({e[1] for e in ends})
        for v in ran:
            sums = {e[0]: [0.0, 0.0] for e in ends}
            for rows in _chunks(trials, seed, s.batch_size):
                batch = _batch(tok, rows, texts, ids, s, dev)
                pushed = push(model, batch, src.block,
                              lambda h: patch_steps(src.feature, src.block, s.mode, h, rows.seeds, batch.patched),
                              read, v, _variant_method(v, s.method),  # type: ignore[arg-type]
                              holds={ch.block: lambda h, p: hold(ch.feature, s.mode, h, p, batch.patched)})
                passes += pushed.passes
                for name, block, f in ends:
                    rec, gated = _end_sums(f, pushed.states[block], pushed.tangents[block], batch.kept)
                    sums[name][0] += float(rec.sum())
                    sums[name][1] += float(gated.sum())
            for name, block, f in ends:
                for readout, direct, col in (("recomputed", sums[name][0], "total"),
                                             ("gated", sums[name][1], "total_gated")):
                    key = (v, ch.condition, block, f.index)
                    total = float(by.loc[key, col]) if by is not None and key in by.index else 0.0
                    direct /= max(len(trials), 1)
                    rows_out.append({"source": src.name, "condition": ch.condition, "mediator": ch.mediator, "c": name,
                                     "variant": v, "readout": readout, "total": total, "direct": direct,
                                     "share": 1 - direct / total if total else np.nan, "n_trials": len(trials)})
    return pd.DataFrame(rows_out, columns=SHARE_COLUMNS), passes
