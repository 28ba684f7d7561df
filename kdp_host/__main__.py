"""`python -m kdp_host` and the `kdp-host` console script: the command's modules load with the
cyclic collector paused (they live as long as the process and `run` freezes them: heap.py),
then the command runs."""

import sys

from . import heap


def main() -> int:
    with heap.paused():
        from .cli import main as command
    return command()


if __name__ == "__main__":
    sys.exit(main())
