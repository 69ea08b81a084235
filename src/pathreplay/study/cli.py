"""`pathreplay` command line: small conveniences around the workflow."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import run_cli

REPO_DEMO = Path(__file__).resolve().parents[3] / "resources" / "demo"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pathreplay")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fig = sub.add_parser("figures", help="measure and print the demo's figures")
    fig.add_argument("--demo", type=Path, default=REPO_DEMO, help="a demo folder (model/, saes/)")
    fig.add_argument("--device", default="auto")
    build = sub.add_parser("build-demo", help="rebuild the demo from scratch into a folder")
    build.add_argument("out", type=Path)
    build.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> None:
        from . import demo

        if args.cmd == "figures":
            layers = sorted(int(p.name[1:-1]) for p in (args.demo / "saes").glob("L*R"))
            table = demo.measure_figures(str(args.demo / "model"), str(args.demo / "saes" / "L{layer}R"),
                                         layers, device=args.device)
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        else:
            figures = demo.build(args.out, demo.DemoSpec(seed=args.seed))
            print(figures)

    run_cli(run)


if __name__ == "__main__":
    main()
