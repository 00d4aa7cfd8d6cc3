"""`gan-train` (and `python -m gan`, and `python train.py` in a checkout): the training command.

This module is light on purpose (``gan.signals`` and the standard library only): torch and Hydra
load inside ``main``, and a Ctrl-C during those seconds of imports is one line once they end, not
a traceback or an abort inside torch's import.
"""

from gan.signals import kept_during_imports


def main() -> None:
    with kept_during_imports():
        from gan.cli import cli
    cli()


if __name__ == "__main__":
    main()
