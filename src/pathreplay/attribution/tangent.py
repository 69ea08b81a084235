"""One teacher-forced pass of the model with the patch's step pushed through it as a tangent.

With F the map from the residual at the source's block L (every position) to the residuals at
the later blocks, and dh the patch's step (attribution.seeds), the prediction is the tangent
tau_l' = J_F(h_base) dh at every later block l', computed without a backward pass:
- `jacobian`: forward-mode AD (torch.autograd.forward_ad) through the model's own forward with
  eager attention (fused attention kernels have no forward-mode rule; attention is registered as
  an implementation of ours, transformers' eager one with a softmax that a float64 mask cannot
  turn into NaN): the full Jacobian, the attention patterns and the norms' scales moving with dh;
- `frozen`: the same with the attention probabilities softmax(q k^T / sqrt(d) + mask) and every
  norm's scale (RMSNorm's rsqrt(mean(x^2) + eps), LayerNorm's 1 / std) held at the baseline's
  (a dual tensor's .detach() drops its tangent), so only values, projections and the MLPs
  (linearised at the baseline point) carry dh: the attribution-graph convention;
- method `difference` (jacobian only, where forward AD cannot run): the central difference
  tau = (F(h + eps dh) - F(h - eps dh)) / (2 eps), eps = EPS ||h|| / ||dh|| per row (rms over the
  patched positions), three forced passes (plus, minus, and the baseline for the primal).
A row whose dh is 0 gets a tangent of exactly 0 either way.

Holds (attribution.seeds.hold) act on the tangent at their blocks, after the block's output and
before anything reads it, as the mediation's hold patches act on the state."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import torch
import torch.autograd.forward_ad as fwAD

from ..errors import fail
from ..runtime.model import decoder_layers
from .sequences import Forced

Variant = Literal["virtual", "frozen", "jacobian"]
Method = Literal["jvp", "difference"]
VARIANTS: tuple[str, ...] = ("virtual", "frozen", "jacobian")
EPS = 2.0**-7  # the central difference's step, relative: near float32's optimum eps ~ u^(1/3)
IMPLEMENTATION = {"frozen": "pathreplay_frozen", "jacobian": "pathreplay_jacobian"}  # registered attention

SeedFn = Callable[[torch.Tensor], torch.Tensor]  # the baseline state at block L [B, S, d] -> dh
HoldFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (state, its unperturbed primal) -> held state


class Pushed(NamedTuple):
    """A pass's seed dh at block L, and the baseline states and tangents at the blocks read."""

    seed: torch.Tensor
    states: dict[int, torch.Tensor]
    tangents: dict[int, torch.Tensor]
    passes: int


class _Stop(Exception):
    """Raised after the last block read: nothing later is computed."""


def _attention(frozen: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Eager attention (transformers' eager_attention_forward, with the softmax in float32 or the
    states' wider dtype: a float64 mask's minimum is -inf in float32, and a padded row of -inf
    is NaN), its probabilities detached when `frozen`: out = P v, P held at the baseline's."""
    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                  **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        groups = int(getattr(module, "num_key_value_groups", 1))
        k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
        v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
        w = torch.matmul(query, k.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask[:, :, :, : k.shape[-2]]
        p = torch.softmax(w, dim=-1, dtype=torch.promote_types(torch.float32, query.dtype)).to(query.dtype)
        p = p.detach() if frozen else p
        return torch.matmul(p, v).transpose(1, 2).contiguous(), p
    return attention


def _frozen_norm(module: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """A norm's forward with its scale detached (the centring of a LayerNorm stays linear)."""
    name = type(module).__name__
    if isinstance(module, torch.nn.LayerNorm):
        def layer_norm(self: Any, x: torch.Tensor) -> torch.Tensor:
            c = x - x.mean(-1, keepdim=True)
            scale = torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + self.eps).detach()
            y = c * scale
            return y * self.weight + self.bias if self.weight is not None else y
        return layer_norm
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if not name.endswith("RMSNorm") or eps is None or getattr(module, "weight", None) is None:
        fail("attribution.variants", f"the frozen variant cannot hold the scale of a {name}",
             "leave `frozen` out of attribution.variants for this model")
    offset = 1.0 if name.startswith("Gemma") else 0.0  # Gemma's norms scale by (1 + weight)

    def rms_norm(self: Any, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()
        return (self.weight + offset) * (xf * scale).to(x.dtype)
    return rms_norm


@contextmanager
def variant_forward(model: Any, variant: Variant) -> Iterator[None]:
    """The model's forward as the variant needs it, for the block: eager attention (jacobian),
    or frozen attention and norms (frozen); restored after."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    old = model.config._attn_implementation
    name = IMPLEMENTATION[variant]
    AttentionInterface.register(name, _attention(variant == "frozen"))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["eager"])  # additive masks, as eager's
    norms = []
    if variant == "frozen":
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm"):
                m.forward = types.MethodType(_frozen_norm(m), m)
                norms.append(m)
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = old
        for m in norms:
            del m.forward


def _run(model: Any, batch: Forced, block: int, read: Sequence[int], seed_hook: Callable[[torch.Tensor], Any],
         holds: Mapping[int, Callable[[torch.Tensor], torch.Tensor]], keep: Callable[[int, torch.Tensor], None]
         ) -> None:
    """One forward pass with the seed applied at `block`'s output, holds at theirs and `keep`
    called on every read block's output; stops after the last read block."""
    layers = decoder_layers(model)
    last = max(read)

    def at_seed(module: Any, args: Any, out: Any) -> Any:
        h = out[0] if isinstance(out, tuple) else out
        h = seed_hook(h)
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    def at_hold(b: int) -> Callable[..., Any]:
        def hook(module: Any, args: Any, out: Any) -> Any:
            h = out[0] if isinstance(out, tuple) else out
            h = holds[b](h)
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        return hook

    def at_read(b: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, out: Any) -> None:
            keep(b, out[0] if isinstance(out, tuple) else out)
            if b == last:
                raise _Stop
        return hook

    handles = [layers[block].register_forward_hook(at_seed, prepend=True)]
    handles += [layers[b].register_forward_hook(at_hold(b)) for b in sorted(holds)]
    handles += [layers[b].register_forward_hook(at_read(b)) for b in sorted(read)]
    try:
        model.base_model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.pos, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def push(model: Any, batch: Forced, block: int, seed: SeedFn, read: Sequence[int], variant: Variant = "jacobian",
         method: Method = "jvp", holds: Mapping[int, HoldFn] | None = None, eps: float = EPS) -> Pushed:
    """The tangents at blocks `read` (all > block) of the seed dh = seed(h_L) pushed from
    block L = `block` (module docstring). `holds`: block -> hold of the tangent there; `eps`:
    the central difference's relative step."""
    holds = dict(holds or {})
    if variant == "virtual":
        raise ValueError("the virtual variant runs no block: it needs no pass")
    if method == "difference" and variant != "jacobian":
        fail("attribution.method", f"the central difference cannot hold what the {variant} variant holds",
             "use method jvp for the frozen variant")
    states: dict[int, torch.Tensor] = {}
    tangents: dict[int, torch.Tensor] = {}
    got: dict[str, torch.Tensor] = {}
    if method == "jvp":
        def dual_seed(h: torch.Tensor) -> torch.Tensor:
            got["seed"] = seed(h)
            return fwAD.make_dual(h, got["seed"])

        def keep(b: int, h: torch.Tensor) -> None:
            p, t = fwAD.unpack_dual(h)
            states[b] = p.clone()
            tangents[b] = torch.zeros_like(p) if t is None else t.clone()

        dual_holds = {b: (lambda h, f=f: f(h, fwAD.unpack_dual(h).primal)) for b, f in holds.items()}
        with fwAD.dual_level(), variant_forward(model, variant):
            _run(model, batch, block, read, dual_seed, dual_holds, keep)
        return Pushed(got["seed"], states, tangents, 1)
    # central difference: the baseline pass first (primal states, and the holds' references)
    base: dict[int, torch.Tensor] = {}

    def keep_base(b: int, h: torch.Tensor) -> None:
        base[b] = h.clone()

    def seed_only(h: torch.Tensor) -> torch.Tensor:
        got["seed"] = seed(h)
        rms = lambda x: x.float().pow(2).sum(-1).sum(-1).div(batch.patched.sum(-1).clamp(min=1)).sqrt()  # noqa: E731
        size = rms(got["seed"])
        got["eps"] = torch.where(size > 0, eps * rms(h * batch.patched[..., None]) / size.clamp(min=1e-30),
                                 torch.ones_like(size))
        return h

    refs: dict[int, torch.Tensor] = {}

    def keep_ref(b: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def f(h: torch.Tensor) -> torch.Tensor:
            refs[b] = h.clone()
            return h
        return f

    _run(model, batch, block, read, seed_only, {b: keep_ref(b) for b in holds}, keep_base)
    step = got["eps"].to(got["seed"].dtype)[:, None, None]
    out = {}
    for sign in (1.0, -1.0):
        run: dict[int, torch.Tensor] = {}
        _run(model, batch, block, read, lambda h, s=sign: h + s * step * got["seed"],
             {b: (lambda h, b=b, f=f: f(h, refs[b])) for b, f in holds.items()},
             lambda b, h, run=run: run.__setitem__(b, h.clone()))
        out[sign] = run
    tangents = {b: (out[1.0][b] - out[-1.0][b]) / (2 * step) for b in read}
    return Pushed(got["seed"], {b: base[b] for b in read}, tangents, 3)


def needs_pass(variants: Sequence[str]) -> list[str]:
    """The variants that run the model (virtual runs no block)."""
    return [v for v in variants if v != "virtual"]

