"""`python -m softmax_approx.report --out DIR [--runs DIR] [--from-wandb ENTITY/PROJECT]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from softmax_approx.utils.errors import UserError
from softmax_approx.utils.profiles import profile_names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m softmax_approx.report",
                                 description="Render tables and figures from results.json files.")
    ap.add_argument("--out", required=True, type=Path, help="writes OUT/tables and OUT/figures")
    ap.add_argument("--runs", type=Path, help="where the results.json files are (default OUT/runs)")
    ap.add_argument("--from-wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    ap.add_argument("--profile", choices=profile_names(),
                    help="default: from OUT/reproduce.json or the runs themselves")
    ap.add_argument("--experiments", type=Path, help="definitions directory (default experiments/)")
    ap.add_argument("--only", action="append", help="render only this experiment (repeatable)")
    args = ap.parse_args(argv)
    from softmax_approx.report.render import render_report
    from softmax_approx.report.wandb_source import load_wandb

    try:
        records = load_wandb(args.from_wandb) if args.from_wandb else None
        rep = render_report(args.out, runs_dir=args.runs, records=records, profile=args.profile,
                            exp_dir=args.experiments, only=args.only)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_done = sum(r.run.status == "completed" for r in rep.records)
    print(f"report [{rep.profile}]: {len(rep.records)} runs ({n_done} completed) -> "
          f"{len(rep.files)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
