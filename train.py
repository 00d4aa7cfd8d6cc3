"""Train one GAN: `python train.py init=he_xavier` (Hydra; `-m` sweeps, e.g. seed=0,1,2).

The code is ``gan/cli.py``, installed as the `gan-train` command; this file keeps `python train.py`
working in a checkout, and its names importable as ``train.<name>``.
"""

if __name__ == "__main__":
    from gan.__main__ import main

    main()
else:
    from gan.cli import *  # noqa: F403 - train.to_run_config and the rest, as before the move
