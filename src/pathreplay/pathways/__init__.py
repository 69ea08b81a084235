"""Pathways (stages `pathways` and `mediate`): the run's claims from every source's effects, the
run-wide BH and edges (`edges`, streamed file by file in `runwide`), the checks that say how far
to trust them (`checks`: controls, upstream layers, patch fidelity) and the mediation of chains
with the middle feature held (`mediation`). May import the base, `stats`, `effects`, and (to
replay chains) `replay`, `runtime` and `sae`."""
