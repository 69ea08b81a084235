"""Build the embedded demo: a small Llama that plays the slot-machine game, and its SAEs.

Everything is trained from scratch on CPU from a fixed seed: a byte-level BPE tokenizer and a
4-block LlamaForCausalLM on simulated players' transcripts (players.py), then one SAE per block
on that block's output, saved in Llama Scope's layout and semantics (sae.py) so the demo runs
through the same loader as Llama Scope itself.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from tqdm import tqdm

from ..io import atomic_dir, write_json, write_tensors
from ..runtime.generate import generate
from ..runtime.model import Device, load_model, positions
from ..runtime.patch import Interventions
from ..sae.exact import SAESource, load_sae
from . import game, players
from .decision import parse_decision

log = logging.getLogger(__name__)

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


class DemoSpec(NamedTuple):
    """Sizes and budgets of the demo build."""

    seed: int = 0
    games: int = 6000
    vocab: int = 640
    d_model: int = 128
    blocks: int = 4
    heads: int = 4
    kv_heads: int = 2
    d_ff: int = 384
    steps: int = 700
    batch: int = 32
    lr: float = 3e-3
    sae_expansion: int = 8
    sae_steps: int = 1500
    sae_prompts: int = 1500
    eval_samples: int = 200


def build_tokenizer(texts: list[str], vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tk.token_to_id(BOS))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    tok.padding_side = "left"
    return tok


def build_model(tok: Any, spec: DemoSpec) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=spec.d_model, intermediate_size=spec.d_ff,
                      num_hidden_layers=spec.blocks, num_attention_heads=spec.heads,
                      num_key_value_heads=spec.kv_heads, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(cfg)


def _batches(tok: Any, examples: list[players.Example], spec: DemoSpec, rng: random.Random):
    """Right-padded training batches. The loss is about the answer: its first token (the choice)
    weighs 5, the rest of the answer 1, the prompt 0.05 (enough to shape the residual stream)."""
    while True:
        chunk = rng.sample(examples, spec.batch)
        seqs, weights = [], []
        for e in chunk:
            n_prompt = len(tok(e.prompt)["input_ids"])
            s = _ids(tok, e.prompt, e.response) + [tok.eos_token_id]
            seqs.append(s)
            weights.append([0.0] + [0.05] * (n_prompt - 1) + [5.0] + [1.0] * (len(s) - n_prompt - 1))
        n = max(map(len, seqs))
        ids = torch.full((len(seqs), n), tok.pad_token_id)
        w = torch.zeros(len(seqs), n)
        for i, (s, wt) in enumerate(zip(seqs, weights)):
            ids[i, : len(s)] = torch.tensor(s)
            w[i, : len(s)] = torch.tensor(wt)
        yield ids, w


def train_model(model: Any, tok: Any, examples: list[players.Example], spec: DemoSpec) -> list[float]:
    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / spec.steps)))
    model.train()
    losses = []
    batches = _batches(tok, examples, spec, rng)
    for _ in tqdm(range(spec.steps), desc="train model", mininterval=5, disable=None):
        ids, w = next(batches)
        logits = model(input_ids=ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * w[:, 1:].reshape(-1)).sum() / w[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def play_exp2(model: Any, tok: Any, n: int, seed: int, temperature: float = 0.7,
              max_new_tokens: int = 24) -> dict[str, dict[str, float]]:
    """Valid-decision and stop rates from n samples of each Exp2 prompt."""
    out = {}
    for ci, (name, prompt) in enumerate(game.exp2_prompts().items()):
        fixed = game.FIXED_BET if game.EXP2_CONTEXTS[name].betting == "fixed" else None
        gen = generate(model, tok, [prompt] * n, [seed * 1_000_003 + ci * 10_007 + i for i in range(n)],
                       max_new_tokens=max_new_tokens, temperature=temperature)
        ds = [parse_decision(t, "first", fixed_bet=fixed) for t in gen.texts]
        valid = [d for d in ds if d.valid]
        bets = [d.bet for d in valid if d.action == "bet" and d.bet == d.bet]  # known amounts
        out[name] = {"valid_rate": len(valid) / n,
                     "stop_rate": sum(d.action == "stop" for d in valid) / max(1, len(valid)),
                     "mean_bet": sum(bets) / max(1, len(bets))}
    return out


def _ids(tok: Any, prompt: str, response: str) -> list[int]:
    """Token ids as the model sees a decision: the prompt, then the answer tokenized on its own
    (joint tokenization would merge the prompt's final space into the answer's first token)."""
    return tok(prompt)["input_ids"] + tok(response, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def block_outputs(model: Any, tok: Any, pairs: list[tuple[str, str]], batch: int = 64) -> dict[int, torch.Tensor]:
    """Every block's output at every non-BOS position of (prompt, answer) pairs."""
    n_blocks = model.config.num_hidden_layers
    dev = next(model.parameters()).device
    acc: dict[int, list[torch.Tensor]] = {b: [] for b in range(n_blocks)}
    for i in range(0, len(pairs), batch):
        seqs = [_ids(tok, p, r) for p, r in pairs[i: i + batch]]
        n = max(map(len, seqs))
        ids = torch.tensor([[tok.pad_token_id] * (n - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs])
        iv = Interventions(model, capture=range(n_blocks), capture_prompt="all")
        with iv.active():
            model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                  position_ids=positions(mask).to(dev))
        # built from the CPU ids and mask: it indexes iv.states, which are on the CPU
        keep = mask.bool() & (ids != tok.bos_token_id)
        for b in range(n_blocks):
            acc[b].append(iv.states(b)[keep])
    return {b: torch.cat(v) for b, v in acc.items()}


def train_sae(x: torch.Tensor, d_sae: int, steps: int, seed: int, l1: float = 3e-3
              ) -> tuple[dict[str, torch.Tensor], float]:
    """Train one SAE directly in Llama Scope's parametrisation; returns (tensors, avg norm)."""
    torch.manual_seed(seed)
    d = x.shape[1]
    avg_norm = float(x.norm(dim=1).mean())
    s = math.sqrt(d) / avg_norm
    D = torch.nn.Parameter(torch.randn(d, d_sae) / math.sqrt(d))
    E = torch.nn.Parameter(D.detach().T.clone())
    bE = torch.nn.Parameter(torch.zeros(d_sae))
    bD = torch.nn.Parameter((x.mean(0) * s).clone())
    opt = torch.optim.Adam([D, E, bE, bD], lr=2e-3)
    for step in range(steps):
        xb = x[torch.randint(0, x.shape[0], (1024,))]
        n = D.norm(dim=0)
        f = torch.relu(n * (xb @ E.T + bE / s))
        x_hat = (f / n) @ D.T + bD / s
        mse = ((xb - x_hat) ** 2).sum(1).mean() / (xb - xb.mean(0)).pow(2).sum(1).mean()
        loss = mse + l1 * min(1.0, step / (steps / 4)) * f.sum(1).mean() * s
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"encoder.weight": E.detach(), "encoder.bias": bE.detach(),
            "decoder.weight": D.detach(), "decoder.bias": bD.detach()}, avg_norm


def fvu(sae: Any, x: torch.Tensor) -> tuple[float, float, float]:
    """(fraction of variance unexplained, mean L0, share of features never active) on x."""
    with torch.no_grad():
        f = sae.encode(x)
        err = (x - sae.decode(f)).pow(2).sum()
        var = (x - x.mean(0)).pow(2).sum()
        return float(err / var), float((f > 0).float().sum(1).mean()), float(((f > 0).sum(0) == 0).float().mean())


def save_llamascope(folder: Path, tensors: dict[str, torch.Tensor], block: int, avg_norm: float,
                    threshold: float) -> None:
    d_sae, d_model = tensors["encoder.weight"].shape
    hp = {"d_model": d_model, "d_sae": d_sae, "hook_point_in": f"blocks.{block}.hook_resid_post",
          "hook_point_out": f"blocks.{block}.hook_resid_post", "act_fn": "jumprelu",
          "jump_relu_threshold": threshold, "norm_activation": "dataset-wise",
          "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm},
          "sparsity_include_decoder_norm": True, "top_k": 50}
    write_json(hp, folder / "hyperparams.json")
    write_tensors(tensors, folder / "checkpoints" / "final.safetensors")


def heldout_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Decision prompts with their answers: SAEs must read the prompt's last position and the
    generated positions, both as the model sees them."""
    return [(e.prompt, e.response) for e in players.transcripts(n, seed)][:n]


def build(out: Path, spec: DemoSpec = DemoSpec()) -> dict[str, Any]:
    """Build the whole demo into `out` (replaced only when complete); returns its figures."""
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    examples = list(players.transcripts(spec.games, spec.seed))
    log.info("%d decisions from %d simulated games", len(examples), spec.games)
    tok = build_tokenizer([e.prompt + e.response for e in examples[:4000]], spec.vocab)
    model = build_model(tok, spec)
    losses = train_model(model, tok, examples, spec)
    play = play_exp2(model, tok, spec.eval_samples, spec.seed + 1)
    log.info("Exp2 prompts: %s", play)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        train_x = block_outputs(model, tok, heldout_pairs(spec.sae_prompts, spec.seed + 2))
        test_x = block_outputs(model, tok, heldout_pairs(300, spec.seed + 3))
        saes = {}
        for b in tqdm(range(spec.blocks), desc="train SAEs", disable=None):
            tensors, avg = train_sae(train_x[b], spec.sae_expansion * spec.d_model, spec.sae_steps,
                                     spec.seed + b)
            folder = tmp / "saes" / f"L{b}R"
            save_llamascope(folder, tensors, b, avg, 0.0)
            # Largest threshold on a grid that keeps held-out FVU within 0.01 of no threshold.
            base = fvu(load_sae(folder, "llamascope", b), test_x[b])[0]
            thr = 0.0
            for cand in (0.01, 0.02, 0.05, 0.1, 0.2):
                save_llamascope(folder, tensors, b, avg, cand)
                if fvu(load_sae(folder, "llamascope", b), test_x[b])[0] <= base + 0.01:
                    thr = cand
            save_llamascope(folder, tensors, b, avg, thr)
            f, l0, dead = fvu(load_sae(folder, "llamascope", b), test_x[b])
            saes[b] = {"fvu": round(f, 4), "l0": round(l0, 2), "dead_fraction": round(dead, 4),
                       "threshold": thr}
        prompts = demo_prompts(spec.seed + 4)
        (tmp / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
        figures = {"spec": spec._asdict(), "final_loss": round(sum(losses[-20:]) / 20, 4),
                   "exp2": play, "saes": saes, "build_seconds": round(time.time() - t0, 1),
                   "params": sum(p.numel() for p in model.parameters())}
        write_json(figures, tmp / "figures.json")
    return figures


def demo_prompts(seed: int, n_states: int = 22) -> list[dict[str, str]]:
    """The two Exp2 prompts plus simulated game states, with a context each (safe if ahead)."""
    rows = [{"id": f"exp2_{k}", "text": v, "context": k} for k, v in game.exp2_prompts().items()]
    rng = random.Random(seed)
    states = [e.state for e in players.transcripts(400, seed) if e.state.history]
    for i, s in enumerate(rng.sample(states, n_states)):
        rows.append({"id": f"state_{i:02d}", "text": game.render_prompt(s),
                     "context": "safe" if s.balance >= game.START_BALANCE else "risky"})
    return rows


def measure_figures(model_path: str, sae_template: str, layers: list[int], fmt: str = "llamascope",
                    *, seed: int = 0, device: Device = "auto", samples: int = 200) -> pd.DataFrame:
    """Re-measure the demo's figures: decisions on the Exp2 prompts, and SAE FVU/L0 per layer on
    held-out game prompts (BOS excluded). Build time comes from figures.json when present.
    Returns a DataFrame (figure, where, value)."""
    model, tok = load_model(model_path, "float32", device)
    rows = []
    for ctx, r in play_exp2(model, tok, samples, seed + 101).items():
        rows += [("valid_rate", ctx, r["valid_rate"]), ("stop_rate", ctx, r["stop_rate"]),
                 ("mean_bet", ctx, r["mean_bet"])]
    x = block_outputs(model, tok, heldout_pairs(300, seed + 103))
    saes = SAESource(sae_template, fmt)
    for layer in layers:
        sae = saes.load(layer)
        f, l0, dead = fvu(sae, x[sae.meta.block].to(sae.W.device))
        rows += [("fvu", f"L{layer}", f), ("l0", f"L{layer}", l0), ("dead_fraction", f"L{layer}", dead)]
    built = Path(model_path).parent / "figures.json"
    if built.exists():
        rows.append(("build_seconds", "demo", json.loads(built.read_text())["build_seconds"]))
    return pd.DataFrame(rows, columns=["figure", "where", "value"])
