"""The consoles the command line prints on: text printed literally, whole lines in files.

Rich reads ``[...]`` in a printed string as markup and drops what it takes for a tag, so a path
such as ``out/[2024]/cube.zarr`` or an example such as ``bands: [red, nir]`` would print wrong:
these consoles never parse markup (styles are given as :class:`rich.text.Text` spans). When the
stream is not a terminal (redirected to a file, a pipe, a CI log) rich would wrap at 80 columns
and split long paths across lines; there they do not wrap at all.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.text import Text

__all__ = ["FILE_WIDTH", "error_text", "make_console", "styled"]

#: Line width given to tables when the output is not a terminal (plain text never wraps there).
FILE_WIDTH = 400


def make_console(*, stderr: bool = False) -> Console:
    """Return a console on stdout (or stderr) that prints text literally.

    Parameters
    ----------
    stderr
        Print on standard error instead of standard output.

    Returns
    -------
    rich.console.Console
        Markup off; on a stream that is not a terminal, soft wrapping (lines are never broken)
        and :data:`FILE_WIDTH` columns for tables.
    """
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, markup=False)
    return Console(stderr=stderr, markup=False, soft_wrap=True, width=FILE_WIDTH)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Join literal strings and ``(text, style)`` pairs into one :class:`~rich.text.Text`.

    Examples
    --------
    >>> styled("cube: ", ("out/[2024]/cube.zarr", "bold")).plain
    'cube: out/[2024]/cube.zarr'
    """
    return Text.assemble(*parts)


def error_text(message: object, label: str = "error:", style: str = "bold red") -> Text:
    """``error: <message>`` with the label styled and the message literal."""
    return styled((label, style), " ", str(message))
