from pathreplay.replay.coupled import run_baseline
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings, write_result
from pathreplay.workflow import open_model, run_script


def main(sm):
    p = sm.params
    prompt = {q.id: q for q in read_prompts(sm.input.prompts)}[sm.wildcards.prompt]
    settings = ReplaySettings(**p.settings)
    model, tok = open_model(p.device, **p.model)
    res = run_baseline(model, tok, prompt, p.trials, p.seed, settings, placebo=p.placebo)
    write_result(res, settings.capture_layers, sm.output.states, sm.output.trials)


run_script(snakemake, main)  # noqa: F821
