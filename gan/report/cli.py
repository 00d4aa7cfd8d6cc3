"""`python -m gan.report <multirun dir> [...]`: an ablation's statistics from its files alone.

The command line of ``gan.report`` (installed as ``gan-report``); the package's docstring says
what it writes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from gan import console
from gan.errors import UserError, exits_on_user_error
from gan.report.columns import PRIMARY
from gan.report.page import write_reports
from gan.report.runs import load_runs

OUTPUTS = (
    "report.md",
    "report.html",
    "curves.png",
    "samples.png",
    "diagnostics.png",
    "summary.csv",
    "atlas.png",
    "atlas.csv",
)


def positive_number(text: str) -> float:
    """An FCD to reach: a finite number above 0 (FCD is never below it)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    installed = Path(sys.argv[0]).name == "gan-report"  # the entry point of an installed package
    parser = argparse.ArgumentParser(
        prog="gan-report" if installed else "python -m gan.report",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun (or run) directories")
    parser.add_argument("--out", type=Path, help="output directory (default: <first input>/report)")
    parser.add_argument(
        "--fcd-threshold",
        type=positive_number,
        default=None,
        help=f"report the steps each run needs to reach {PRIMARY} ≤ this value",
    )
    args = parser.parse_args(argv)
    console.setup()
    runs, incomplete = load_runs(args.inputs)
    out = args.out or args.inputs[0] / "report"
    before = {name: _mtime(out / name) for name in OUTPUTS}
    try:
        out.mkdir(parents=True, exist_ok=True)
        text = write_reports(runs, incomplete, out, args.fcd_threshold)
    except OSError as err:
        raise UserError(
            f"--out {out}: the report cannot be written there ({err.strerror or err}); give a "
            "writable directory"
        ) from None
    print(text)
    # This call's files only: an earlier report into the same folder leaves its own.
    written = [str(out / n) for n in OUTPUTS if _mtime(out / n) not in (None, before[n])]
    print("wrote " + ", ".join(written))
    return 0
