import logging

from pathreplay.behaviour.measures import behaviour_effects
from pathreplay.io import read_table, read_tables, write_table
from pathreplay.task import load_task
from pathreplay.workflow import run_script


def main(sm):
    task = load_task(sm.params.task)
    plan = read_table(sm.input.plan)
    e = behaviour_effects(read_tables(sm.input.trials), read_table(sm.input.baseline), task)
    e = e.merge(plan[["feature", "prompt_id", "condition", "trials", "power"]].rename(
        columns={"trials": "trials_planned", "power": "power_planned"}), on=["feature", "prompt_id", "condition"],
        how="left")
    rate = task.primary.name
    real = e[e["condition"].isin(plan["condition"])]
    a = sm.params.alpha
    hits = real[(real[f"q_{rate}"] < a) & (real["q_vs_random"] < a)]
    logging.info("behaviour: %d real (feature, prompt, condition) arms, %d change the %s rate against the baseline "
                 "and against the random control (q < %g both)", len(real), len(hits), rate, a)
    write_table(e, sm.output[0])


run_script(snakemake, main)  # noqa: F821
