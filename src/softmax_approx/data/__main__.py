"""Command line: ``python -m softmax_approx.data {download,prepare-iwslt14,check} ...``.

Examples::

    python -m softmax_approx.data download all --data-dir data
    python -m softmax_approx.data prepare-iwslt14 --tgz ~/de-en.tgz --data-dir data
    python -m softmax_approx.data check multi30k --data-dir data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from softmax_approx.utils.extras import require

require("harness")  # first: without the extra, one line naming it instead of an ImportError

from softmax_approx.utils.errors import UserError

DATA_DIR_HELP = "where the datasets live (default: $SOFTMAX_APPROX_DATA, else the user's data cache)"


def main(argv: list[str] | None = None) -> int:
    from softmax_approx.data.datasets import shipped_names

    tasks = shipped_names()  # the task yamls with a download recipe (task.data.download)
    p = argparse.ArgumentParser(prog="python -m softmax_approx.data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch a dataset into DATA_DIR in the layout the readers read")
    d.add_argument("task", choices=[*tasks, "all"])
    d.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    i = sub.add_parser("prepare-iwslt14", help="build iwslt14.tokenized.de-en from the original de-en.tgz")
    i.add_argument("--tgz", required=True, type=Path)
    i.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    c = sub.add_parser("check", help="say whether a task's files are present (reads nothing)")
    c.add_argument("task", choices=tasks)
    c.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    args = p.parse_args(argv)
    if args.data_dir is None:
        from softmax_approx.data.files import default_data_dir

        args.data_dir = default_data_dir()
    try:
        if args.cmd == "download":
            from softmax_approx.data.download import download

            download(args.task, args.data_dir)
        elif args.cmd == "prepare-iwslt14":
            from softmax_approx.data.files import IWSLT_SUBDIR
            from softmax_approx.data.iwslt_prepare import prepare_iwslt14_from_tgz

            counts = prepare_iwslt14_from_tgz(args.tgz, args.data_dir / IWSLT_SUBDIR)
            print(f"iwslt14: wrote {args.data_dir / IWSLT_SUBDIR} " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        else:
            from softmax_approx.data.files import check_files

            for name, path in check_files(args.task, args.data_dir).items():
                print(f"{name}: {path}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
