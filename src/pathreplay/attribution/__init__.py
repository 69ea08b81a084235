"""Attribution against intervention (stages `attribute` and `attribution_agreement`): what a
linearisation of the model predicts each source's patch does to every downstream SAE feature,
checked against what the replay measured. `sequences` lays the baseline trials out as one
teacher-forced pass each, `seeds` computes the patch's own step dh there as the replay applies
it, `tangent` pushes dh through the model as a tangent (forward-mode AD: `frozen` or `jacobian`;
or a central difference), `readout` turns tangents into predicted feature changes (the carried
dh and the computed rest apart, gated and recomputed), `predict` runs a source with its controls
and the holds of its mediated chains, and `agreement`, `reliability`, `triage` and `plots` make
the comparison: rank agreement, precision and recall of edges, the noise ceiling of the measured
deltas, the recall of replaying only the sources attribution ranks highest. May import
everything generic (the base, `stats`, `sae`, `runtime`, `replay`, `effects`, `pathways`);
never `study`."""
