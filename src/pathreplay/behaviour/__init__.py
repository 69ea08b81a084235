"""Behaviour (stages `screen` and the decisions in `pathways`): what the model chose under each
patch, by the task's measures (pathreplay.task), tested paired against the baseline trials of the
same seeds (`measures`), and the screen that redoes the study's Exp2 measurement for any task
(`screen`). May import the base, `stats`, `sae`, `task` and `replay`; never a study."""
