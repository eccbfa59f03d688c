"""The two facts the report reads from the transfer methods: their names in the registry's order
and their default learning rates.

The report imports without torch (``tests/test_layers.py``); the method registry imports every
method, hence torch, so it is imported here only when a table that needs it is built.
"""

from __future__ import annotations


def method_order() -> tuple[str, ...]:
    """Every transfer method by name, in the registry's (the tables') order."""
    # imports torch (the methods): only when a table is built
    from semalign_core.transfer.registry import METHODS

    return tuple(METHODS)


def default_lr(method: str) -> float:
    """The learning rate of ``method``'s default config."""
    # imports torch (the methods): only when a table is built
    from semalign_core.transfer.registry import make_config

    return make_config(method).lr


__all__ = ["default_lr", "method_order"]
