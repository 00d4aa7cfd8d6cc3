"""`gan-train` (and `python -m gan`): the training command, as `python train.py` in a checkout.

This module is light on purpose: torch and Hydra load inside ``main``, so a Ctrl-C during those
seconds of imports is one line, not a traceback.
"""

import sys


def main() -> None:
    try:
        from gan.cli import cli
    except KeyboardInterrupt:
        print("interrupted during start-up: nothing was trained", file=sys.stderr)
        sys.exit(130)
    cli()


if __name__ == "__main__":
    main()
