from pathlib import Path

from pathreplay.study.demo import DemoSpec, build
from pathreplay.workflow import run_script


def main(sm):
    build(Path(sm.output[0]), DemoSpec(seed=sm.params.seed))


run_script(snakemake, main)  # noqa: F821
