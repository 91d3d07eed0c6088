"""Options shared by the subcommands: one name, ``--overwrite``, for "replace what exists".

Every subcommand that can find its output already there (``demo``, ``prepare``, ``generate``,
``run``, ``respond``, ``monitor``) takes ``--overwrite``, and every message that advises replacing an
output names it (:data:`OVERWRITE_FLAG`). ``--force``, the name some commands used before, still
works on each of them but is hidden from ``--help`` and warns.
"""

from __future__ import annotations

from flows.console import error_text, make_console

__all__ = ["DEPRECATED_ALIAS", "FORCE_ALIAS_HELP", "OVERWRITE_FLAG", "overwrite_flag"]

#: The flag that replaces an existing output, on every subcommand.
OVERWRITE_FLAG = "--overwrite"

#: The former name of :data:`OVERWRITE_FLAG`, kept as a hidden alias.
DEPRECATED_ALIAS = "--force"

FORCE_ALIAS_HELP = f"Deprecated alias of {OVERWRITE_FLAG}."


def overwrite_flag(overwrite: bool, force: bool) -> bool:
    """Merge ``--overwrite`` and its deprecated alias ``--force``, warning when the alias is used.

    Parameters
    ----------
    overwrite
        Value of ``--overwrite``.
    force
        Value of the hidden ``--force``.

    Returns
    -------
    bool
        Whether the command replaces what exists.
    """
    if force:
        make_console(stderr=True).print(
            error_text(
                f"{DEPRECATED_ALIAS} is deprecated and will be removed; use {OVERWRITE_FLAG}",
                label="warning:",
                style="yellow",
            )
        )
    return overwrite or force
