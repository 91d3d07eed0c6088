"""The README's shell commands, as the tests that hold them read them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quotes_open(text: str) -> bool:
    """Whether ``text`` ends inside a shell quotation (its command goes on on the next line)."""
    try:
        shlex.split(text)
    except ValueError:
        return True
    return False


def _without_comment(before: str, line: str) -> str:
    """``line`` up to its first `` #`` outside quotes (``before``: the command's earlier lines)."""
    for match in re.finditer(r"\s#", line):
        head = line[: match.start()]
        if not _quotes_open(f"{before} {head}"):
            return head.strip()
    return line


def readme_commands(text: str | None = None) -> list[str]:
    """Every command line of the README's ```bash blocks.

    Comments (a ``#`` at the start of a line, or after a space outside quotes) are dropped, lines
    continued with a backslash are joined, and so are the lines of a quotation that spans several
    lines (whose whitespace is kept as one space).

    Parameters
    ----------
    text
        The README's text; default the repository's README.md.

    Returns
    -------
    list[str]
        The commands in the order the README gives them.
    """
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text() if text is None else text, flags=re.S):
        pending = ""
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            line = _without_comment(pending, line)
            pending = f"{pending} {line}" if pending else line
            if not _quotes_open(pending):
                commands.append(pending)
                pending = ""
        if pending:
            raise ValueError(f"README.md: a bash block ends inside a quotation: {pending!r}")
    return commands
