"""`python -m gan.report <multirun dir> [...]`: an ablation's statistics from its files alone.

Reads every run directory below the inputs (``summary.json`` + ``metrics.jsonl`` + the last sample
grid; no network, no W&B account) and writes into ``--out``: ``report.md`` and the same page as a
self-contained ``report.html`` (per-arm tables, pairwise tests with Holm's correction and
bootstrap intervals, a plain-words verdict), ``curves.png`` (mean and 95 % confidence band across
seeds per arm), ``samples.png`` (each arm's median-FCD seed), ``diagnostics.png`` (per-layer
statistics by arm at step 0 and the last diagnostic step) and ``summary.csv`` (one row per run).

Runs are grouped by setting (the resolved config minus the init arm, the seed, logging and paths;
``read_setting``) and never averaged across settings: runs of several settings get one such report
per setting, in a folder of its own, and the atlas of them all on top (``gan.report.atlas``).

The package's rooms: ``runs`` reads run directories, ``grouping`` groups them by setting and arm,
``stats`` holds the statistics, ``comparisons`` the pairwise tests and the verdict, ``tables`` the
page's Markdown and summary.csv, ``figures`` the PNGs, ``atlas`` the several-settings view,
``html`` the self-contained page, ``page`` writes a report, ``cli`` is the command line.
"""

from gan.report.cli import main
from gan.report.grouping import arms_of, by_setting
from gan.report.page import write_report, write_reports
from gan.report.runs import Run, Skipped, UnreadableRun, load_runs, read_run

__all__ = [
    "Run",
    "Skipped",
    "UnreadableRun",
    "arms_of",
    "by_setting",
    "load_runs",
    "main",
    "read_run",
    "write_report",
    "write_reports",
]
