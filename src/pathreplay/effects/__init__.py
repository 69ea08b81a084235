"""Effects (stage `effects`): one patched source feature's change of every feature of every other
captured layer, per contrast and scope, with paired tests; written a layer at a time.

Effects of one patched source feature on every feature of every other captured layer, with
paired tests, for the real conditions and the controls alike.

Scopes (each row says which):
- `prompt_last`: the target feature at the last prompt position. Prefill is deterministic, so the
  patched minus baseline difference there is one number per prompt; the test is a sign-flip
  test across prompts (n = prompts; exact up to 12 non-zero prompts), none with fewer than 3
  prompts. Its smallest p is 2 / 2^prompts: 4 prompts cannot reach p < 0.125.
- `generated`: the target feature's mean over a trial's kept generated positions, sampled with
  the patch against the baseline trial of the same seed (shared random numbers): the total
  effect, the patch's own and that of the tokens it changed.
- `forced`: the same mean in the patched run teacher-forced on the baseline trial's own tokens:
  the direct effect at matched positions.
Trial scopes use stats.signflip.paired_p over trial pairs. Contrasts (`control`): `real` (the replay's
conditions), `sham`, `random` (random:<condition>) and `placebo` (baseline trials of another seed
stream, prompt_last and generated scopes), all through the same tests. Downstream layers make the effects;
upstream layers are a negative control: forced differences there must be exactly 0, and a sham's
everywhere, or the job stops.

Rows: a layer's targets are the features any of the source's trials has; a contrast writes the
row of a target active (last or gen) in one of its pairs' trials at least. A row left out would
say means 0, delta 0, n_nonzero 0, no test: it is in no BH family, and pathways reads its absence
so (upstream `features` counts the layer's targets; an edge's missing side delta is 0). At the
study's shape (32 x 32,768 features, heavy-tailed activity) the union is nearly the whole
dictionary: about 23 contrasts x 31 layers x ~29,000 rows per source (benchmarks/scale.py).

Modules: `contrasts` (which trials are paired in which scope), `codes` (the codes files read a
layer at a time, as dense matrices), `columns` (a contrast's columns at one layer), `layers`
(every layer of a source, q within the source), `write` (streamed to Parquet). May import the
package's base (errors, io, features), `stats` and `replay.plan`; nothing here runs a model.
"""
