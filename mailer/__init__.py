"""The Top Ten mailer: validate, preview and deliver a daily issue of ten stories."""

import gc

__version__ = "0.1.0"


def set_aside() -> None:
    """Turn the cyclic garbage collector on, with every object made so far set aside from it
    (gc.freeze): the modules, the settings and the rendered issue live as long as the command,
    and each full collection would otherwise walk them all again. The command line turns the
    collector off while it starts up (`mailer.cli.main`) and calls this before a command's own
    work, and again once a send or a replay has its rendered issue."""
    gc.freeze()
    gc.enable()
