"""Replay (stages `select` and `replay`): the plan decided before any GPU work (`plan`: conditions,
selection, seeds, jobs, capture sizes), the prompts (`prompts`), batches of trials generated or
teacher-forced with their captures (`trials`), and the coupled runs of a source with its controls
(`coupled`). May import the base, `sae`, `task` and `runtime`."""
