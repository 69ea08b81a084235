"""The model and what runs inside its forward pass (stage-free): loading a causal LM and its
tokenizer (`model`), patch and capture (`patch`), coupled sampling and the
generation loop (`generate`), the static-cache engine whose decode steps replay as CUDA graphs
(`engine`), its kernels (`kernels`) and the tensors a graphed step reads and writes (`static`).
Everything a decode step touches lives here; the rest of the package plans, stores and tests.
May import the base and `sae` (a patch reads one feature's slice)."""
