import logging

from pathreplay.behaviour.power import plan_behaviour
from pathreplay.io import read_table, write_table
from pathreplay.replay.plan import parse_conditions
from pathreplay.task import load_task
from pathreplay.workflow import run_script


def main(sm):
    p, b = sm.params, sm.params.behaviour
    features = p.features
    screen = read_table(sm.input.screen) if "screen" in sm.input.keys() else None
    conditions = [c.name for c in parse_conditions(p.conditions)]
    plan = plan_behaviour(screen, features, conditions, p.prompts, load_task(p.task).primary.name, p.alpha,
                          b["power"], b["min_effect"], b["min_trials"], b["max_trials"])
    logging.info("behaviour plan: %d (feature, prompt, condition) arms, %d to %d trials each (median %d)", len(plan),
                 plan["trials"].min(), plan["trials"].max(), int(plan["trials"].median()))
    write_table(plan, sm.output[0])


run_script(snakemake, main)  # noqa: F821
