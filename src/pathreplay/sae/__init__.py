"""SAEs (used by every stage that reads a feature; stage `encode`): one exact affine-threshold form
for every supported SAE (`exact`: SAE, Feature, SAESource), the files each release writes
(`files`), the exact fast encode (`fast`) and the encoding of captured states into sparse codes
with the SAE's quality on them (`encode`). May import the base only (errors, io, features)."""
