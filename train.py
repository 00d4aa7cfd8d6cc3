"""Train one GAN: `python train.py init=he_xavier` (Hydra; `-m` sweeps, e.g. seed=0,1,2).

The code is ``gan/cli.py``, installed as the `gan-train` command; this file keeps `python train.py`
working in a checkout, and its names importable as ``train.<name>``.
"""

import sys

try:  # torch and Hydra load here, a second or two: Ctrl-C meanwhile is one line, not a traceback
    from gan.cli import *  # noqa: F403 - train.to_run_config and the rest, as before the move
    from gan.cli import cli
except KeyboardInterrupt:
    if __name__ != "__main__":
        raise
    print("interrupted during start-up: nothing was trained", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    cli()
