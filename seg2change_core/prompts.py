"""Class prompts: the things a user asks the segmenters to find, and which of them are targets.

A *class* is one or more comma-separated synonyms (``"building,roof,house"``); its first name is
its display name. A :class:`PromptSet` is the ordered list of classes, an optional *background*
class and the *target* classes whose changes the user cares about.

Channel order, used by every segmenter and by :mod:`seg2change_core.fusion`: the background, when
there is one, is channel 0 and the classes follow in the order given. ``K`` (``num_classes``)
counts the background.

Three textual forms are accepted:

* a command-line string: classes separated by ``;``, synonyms by ``,``
  (``"building,roof,house;water,river"``), see :meth:`PromptSet.from_string`;
* a YAML document: a list of classes (strings or lists of synonyms), or a mapping with
  ``classes``, ``background`` and ``targets``, see :meth:`PromptSet.from_yaml`;
* a plain text file with one class per line, as the class files of open-vocabulary segmentation
  benchmarks (``cls_openearthmap.txt``); blank lines and ``#`` comments are skipped, see
  :meth:`PromptSet.from_file`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seg2change_core.errors import PromptError

__all__ = ["CLASS_SEPARATOR", "SYNONYM_SEPARATOR", "ClassPrompt", "PromptSet"]

#: Separates classes in a command-line prompt string.
CLASS_SEPARATOR = ";"
#: Separates the synonyms of one class.
SYNONYM_SEPARATOR = ","

_FORBIDDEN = (CLASS_SEPARATOR, SYNONYM_SEPARATOR, "\n", "\r")


@dataclass(frozen=True)
class ClassPrompt:
    """One class: its synonyms, the first of which is the display name.

    Parameters
    ----------
    names
        The synonyms, stripped of surrounding white space. At least one; none empty; no two equal
        when compared case-insensitively.

    Raises
    ------
    PromptError
        If a name is empty, repeated or contains a separator.
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.names, str):
            raise PromptError(
                f"ClassPrompt(names={self.names!r}) needs a tuple of names; "
                f"use ClassPrompt.parse({self.names!r}) for a comma-separated string"
            )
        names = tuple(str(n).strip() for n in self.names)
        if not names:
            raise PromptError("a class has no name: give at least one, e.g. 'building,roof'")
        for name in names:
            if not name:
                raise PromptError(
                    f"empty name in class {SYNONYM_SEPARATOR.join(names)!r}: remove the stray separator"
                    if any(names)
                    else "empty class name (nothing between two separators): remove the stray separator"
                )
            bad = [s for s in _FORBIDDEN if s in name]
            if bad:
                raise PromptError(
                    f"class name {name!r} contains the separator {bad[0]!r}: "
                    f"use ClassPrompt.parse or PromptSet.from_string to split synonyms and classes"
                )
        seen: set[str] = set()
        for name in names:
            if name.casefold() in seen:
                raise PromptError(
                    f"name {name!r} is given twice in class {SYNONYM_SEPARATOR.join(names)!r}: "
                    "list each synonym once"
                )
            seen.add(name.casefold())
        object.__setattr__(self, "names", names)

    @classmethod
    def parse(cls, text: str) -> ClassPrompt:
        """Build a class from comma-separated synonyms, e.g. ``"building,roof,house"``."""
        return cls(tuple(text.split(SYNONYM_SEPARATOR)))

    @property
    def name(self) -> str:
        """The display name (the first synonym)."""
        return self.names[0]

    def __str__(self) -> str:
        return SYNONYM_SEPARATOR.join(self.names)


def _as_class(value: ClassPrompt | str | Sequence[str]) -> ClassPrompt:
    if isinstance(value, ClassPrompt):
        return value
    if isinstance(value, str):
        return ClassPrompt.parse(value)
    return ClassPrompt(tuple(value))


@dataclass(frozen=True)
class PromptSet:
    """Ordered classes, an optional background class and the target classes.

    Parameters
    ----------
    classes
        The classes, as :class:`ClassPrompt` or comma-separated strings. At least one.
    background
        The background class (comma-separated synonyms allowed, e.g. ``"background,clutter"``),
        or None for none. When given it is channel 0 of every class-probability tensor.
    targets
        Names of the classes whose changes matter; any synonym of a class may be used, matching
        is case-insensitive. Stored as display names, in class order. Empty (the default) means
        every class except the background.

    Raises
    ------
    PromptError
        On no classes, empty or duplicated names (also across classes and the background,
        case-insensitive), or targets that name no class or name the background.
    """

    classes: tuple[ClassPrompt, ...]
    background: str | None = None
    targets: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        raw: Any = self.classes
        if isinstance(raw, str | ClassPrompt):
            raw = (raw,)
        classes = tuple(_as_class(c) for c in raw)
        if not classes:
            raise PromptError("no classes given: name at least one, e.g. 'building,roof;water'")
        background = None if self.background is None else _as_class(self.background)

        owner: dict[str, str] = {}
        for prompt in (*(() if background is None else (background,)), *classes):
            for name in prompt.names:
                key = name.casefold()
                if key in owner:
                    raise PromptError(
                        f"name {name!r} appears in both {owner[key]!r} and {str(prompt)!r}: "
                        "each name may belong to one class only; remove or rename one of them"
                    )
                owner[key] = str(prompt)

        by_name = {n.casefold(): c for c in classes for n in c.names}
        raw_targets: Any = self.targets
        if isinstance(raw_targets, str):
            raw_targets = raw_targets.split(SYNONYM_SEPARATOR)
        wanted: set[str] = set()
        for target in raw_targets:
            key = str(target).strip().casefold()
            if not key:
                raise PromptError("empty target name: remove the stray separator in the targets")
            if background is not None and key in {n.casefold() for n in background.names}:
                raise PromptError(
                    f"target {target!r} is the background class: the background cannot be a target; "
                    "give it as a class instead of as the background"
                )
            if key not in by_name:
                known = ", ".join(c.name for c in classes)
                raise PromptError(
                    f"target {target!r} is not among the classes ({known}): "
                    "add it to the classes or fix its spelling"
                )
            wanted.add(by_name[key].name)
        targets = tuple(c.name for c in classes if not wanted or c.name in wanted)

        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "background", None if background is None else str(background))
        object.__setattr__(self, "targets", targets)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_string(
        cls,
        text: str,
        *,
        background: str | None = None,
        targets: Iterable[str] | str = (),
    ) -> PromptSet:
        """Parse a command-line prompt string.

        Classes are separated by ``;`` and synonyms by ``,``:
        ``"building,roof,house;water,river"`` gives two classes, ``building`` and ``water``.

        Parameters
        ----------
        text
            The prompt string.
        background
            The background class; if one of the parsed classes has it among its names, that class
            (with its synonyms) becomes the background instead of a class.
        targets
            Target class names (an iterable, or a comma-separated string); empty: all classes.

        Returns
        -------
        PromptSet
        """
        items = text.split(CLASS_SEPARATOR)
        if items and not items[-1].strip():
            items.pop()  # a trailing ';' is harmless
        return cls._build(items, background, targets)

    @classmethod
    def from_lines(
        cls,
        lines: Iterable[str],
        *,
        background: str | None = None,
        targets: Iterable[str] | str = (),
    ) -> PromptSet:
        """Build from lines holding one class each (blank lines and ``#`` comments skipped).

        See :meth:`from_string` for ``background`` and ``targets``.
        """
        items = []
        for line in lines:
            content = line.split("#", 1)[0].strip()
            if content:
                items.append(content)
        return cls._build(items, background, targets)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        background: str | None = None,
        targets: Iterable[str] | str = (),
    ) -> PromptSet:
        """Read a class file with one class per line (e.g. ``cls_openearthmap.txt``).

        A line such as ``background`` in a benchmark class file becomes the background when
        ``background="background"`` is passed; see :meth:`from_string`.

        Raises
        ------
        PromptError
            If the file cannot be read, or its classes are invalid.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PromptError(f"cannot read the class file {str(path)!r}: {exc}; check the path") from exc
        return cls.from_lines(text.splitlines(), background=background, targets=targets)

    @classmethod
    def from_yaml(cls, source: str | Path) -> PromptSet:
        """Load from YAML text or a YAML file.

        Either a list of classes, each a comma-separated string or a list of synonyms::

            - building,roof,house
            - [water, river]

        or a mapping::

            classes: [building,roof,house, water]
            background: background
            targets: [building]

        Parameters
        ----------
        source
            A path to an existing ``.yaml``/``.yml`` file (a :class:`~pathlib.Path` is always read),
            or the YAML text itself.

        Raises
        ------
        PromptError
            If the YAML is unreadable or not of either form, or the classes are invalid.
        """
        if isinstance(source, Path) or (
            "\n" not in source and source.endswith((".yaml", ".yml")) and Path(source).exists()
        ):
            try:
                source = Path(source).read_text(encoding="utf-8")
            except OSError as exc:
                raise PromptError(f"cannot read the prompt file {str(source)!r}: {exc}") from exc
        try:
            doc = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise PromptError(f"prompt YAML does not parse: {exc}; fix the YAML syntax") from exc
        background: str | None = None
        targets: Any = ()
        if isinstance(doc, dict):
            unknown = set(doc) - {"classes", "background", "targets"}
            if unknown:
                raise PromptError(
                    f"unknown prompt keys {sorted(unknown)}: use only 'classes', 'background', 'targets'"
                )
            background = doc.get("background")
            targets = doc.get("targets") or ()
            doc = doc.get("classes")
        if not isinstance(doc, list):
            raise PromptError(
                "prompt YAML must be a list of classes or a mapping with a 'classes' list, "
                f"got {type(doc).__name__}"
            )
        items: list[str | Sequence[str]] = []
        for item in doc:
            if isinstance(item, str):
                items.append(item)
            elif isinstance(item, list) and all(isinstance(n, str) for n in item):
                items.append(tuple(item))
            else:
                raise PromptError(
                    f"class {item!r} in the prompt YAML is neither a string nor a list of strings"
                )
        return cls._build(items, background, targets)

    @classmethod
    def _build(
        cls,
        items: Sequence[str | Sequence[str]],
        background: str | None,
        targets: Iterable[str] | str,
    ) -> PromptSet:
        classes = [_as_class(item) for item in items]
        if background is not None:
            bg = _as_class(background)
            keys = {n.casefold() for n in bg.names}
            matches = [c for c in classes if keys & {n.casefold() for n in c.names}]
            if matches:
                # A benchmark class file lists the background as an ordinary line; promote it.
                classes = [c for c in classes if c is not matches[0]]
                merged = bg.names + tuple(n for n in matches[0].names if n.casefold() not in keys)
                background = SYNONYM_SEPARATOR.join(merged)
        if isinstance(targets, str):
            targets = targets.split(SYNONYM_SEPARATOR) if targets.strip() else ()
        return cls(tuple(classes), background, tuple(targets))

    # ------------------------------------------------------------------ views

    @property
    def background_prompt(self) -> ClassPrompt | None:
        """The background as a :class:`ClassPrompt`, or None."""
        return None if self.background is None else ClassPrompt.parse(self.background)

    @property
    def prompts(self) -> tuple[ClassPrompt, ...]:
        """All K class prompts in channel order (background first when given)."""
        bg = self.background_prompt
        return self.classes if bg is None else (bg, *self.classes)

    @property
    def labels(self) -> tuple[str, ...]:
        """Display names of the K channels, in channel order."""
        return tuple(p.name for p in self.prompts)

    @property
    def num_classes(self) -> int:
        """K: the number of channels, background included."""
        return len(self.classes) + (self.background is not None)

    @property
    def background_index(self) -> int | None:
        """The background's channel (0), or None without a background."""
        return None if self.background is None else 0

    @property
    def target_indices(self) -> tuple[int, ...]:
        """Channels of the target classes, in class order."""
        return tuple(self.index(t) for t in self.targets)

    def index(self, name: str) -> int:
        """Return the channel of the class (or background) that has ``name`` among its synonyms.

        Raises
        ------
        PromptError
            If no class has that name.
        """
        key = name.strip().casefold()
        for i, prompt in enumerate(self.prompts):
            if key in {n.casefold() for n in prompt.names}:
                return i
        raise PromptError(f"{name!r} is not among the classes ({', '.join(self.labels)}): check the spelling")

    def to_string(self) -> str:
        """The classes (not the background) as a command-line string; inverse of :meth:`from_string`."""
        return CLASS_SEPARATOR.join(str(c) for c in self.classes)
