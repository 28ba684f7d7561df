"""The cyclic garbage collector while `kdp-host run` starts (README, "Start-up").

Start-up makes objects that live as long as the process: the modules of the host, the
config. The collector would look at them again and again while they are made (a young
collection every few hundred allocations, older ones on top) and at every full collection
after. So `cli.cmd_run` makes them with the collector paused (`paused`) and then freezes
them out of every later collection (`settle`, `gc.freeze`). Only the command does this: a
library caller's collector is left as it was.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block, and back as it was after it, whatever happens."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def settle() -> None:
    """The lasting objects of start-up are made: no later collection looks at them."""
    gc.freeze()
