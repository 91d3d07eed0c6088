"""Change targets: how raw change labels are encoded, and how they become ``0`` / ``1`` / ignored.

A raw change label becomes a training/evaluation target of ``0`` (unchanged), ``1`` (changed) or
:data:`IGNORE_INDEX` (255, not scored).

Label encodings
---------------
Public datasets spell "changed" differently: LEVIR-CD and most RGB sets use 0/255, many
re-distributions 0/1, OSCD's ``<city>-cm.tif`` **1 = no change, 2 = change**, and the Landsat
Taizhou/Nanjing references 0/255 with 128 = "not labelled". Read with the wrong rule, a 1/2 label
scores as all-unchanged without any error. A :class:`LabelEncoding` says which raw values mean
unchanged, changed and ignore; :func:`encode_label` maps a label with it and refuses any value the
encoding does not name.

An encoding is either **declared** (:meth:`LabelEncoding.parse` of ``"unchanged=1,changed=2"``,
the CLI's ``--label-values``) or **detected** from the values present
(:func:`detect_label_encoding`) among the :data:`KNOWN_ENCODINGS`: the candidates are the known
encodings that name every value present; when all candidates give each present value the same
meaning the first is taken, otherwise (e.g. a label holding only 1s: "changed" in 0/1,
"unchanged" in 1/2) the values are ambiguous and a :class:`~seg2change_core.errors.DatasetError`
asks for ``--label-values``. Values that fit no known encoding are refused the same way.
Folder datasets detect once per dataset folder from the values of all its labels
(:func:`~seg2change_core.datasets.scan_folder`), so LEVIR-CD's all-unchanged tiles (only 0s) are
read with the 0/255 rule of the other tiles.

:func:`change_target` is the older one-label helper: it uses an encoding when given or detected and
otherwise binarises with ``label > threshold`` (labels with grey levels, e.g. JPEG-compressed
masks). Datasets never use that fallback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from seg2change_core.datasets.images import Array, _single_band, read_image
from seg2change_core.errors import DatasetError

__all__ = [
    "IGNORE_INDEX",
    "KNOWN_ENCODINGS",
    "LabelEncoding",
    "change_target",
    "detect_label_encoding",
    "detect_files_encoding",
    "encode_label",
    "label_values",
]

#: Target value of pixels that are not trained on or scored.
IGNORE_INDEX = 255

_DECLARE_HINT = (
    "declare the encoding with --label-values, e.g. --label-values unchanged=1,changed=2 "
    "(or unchanged=0,changed=255,ignore=128; several values as changed=1/2)"
)


@dataclass(frozen=True)
class LabelEncoding:
    """Which raw label values mean unchanged, changed and "not labelled".

    Attributes
    ----------
    unchanged
        Raw values of unchanged pixels (target 0).
    changed
        Raw values of changed pixels (target 1).
    ignore
        Raw values of pixels that are not scored (target :data:`IGNORE_INDEX`).

    Raises
    ------
    DatasetError
        When ``unchanged`` or ``changed`` is empty or a value has two meanings.
    """

    unchanged: tuple[int, ...]
    changed: tuple[int, ...]
    ignore: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.unchanged or not self.changed:
            raise DatasetError(
                f"a label encoding needs at least one unchanged and one changed value, got {self}; "
                + _DECLARE_HINT
            )
        groups = (self.unchanged, self.changed, self.ignore)
        values = [int(v) for group in groups for v in group]
        if len(set(values)) != len(values):
            raise DatasetError(
                f"label encoding {self.describe()} gives one raw value two meanings; "
                "each value may appear once"
            )

    @property
    def values(self) -> frozenset[int]:
        """Every raw value the encoding names."""
        return frozenset((*self.unchanged, *self.changed, *self.ignore))

    def meaning(self, value: int) -> int | None:
        """Target of one raw value: 0, 1, :data:`IGNORE_INDEX`, or ``None`` when not named."""
        if value in self.unchanged:
            return 0
        if value in self.changed:
            return 1
        if value in self.ignore:
            return IGNORE_INDEX
        return None

    def with_ignore(self, value: int | None) -> LabelEncoding:
        """The encoding with one more ignore value (itself when ``value`` is ``None`` or known).

        Raises
        ------
        DatasetError
            When ``value`` already means unchanged or changed.
        """
        if value is None or value in self.ignore:
            return self
        if value in self.unchanged or value in self.changed:
            raise DatasetError(
                f"ignore value {value} already means "
                f"{'unchanged' if value in self.unchanged else 'changed'} in labels encoded "
                f"{self.describe()}; choose another --ignore-value or leave it out"
            )
        return LabelEncoding(self.unchanged, self.changed, (*self.ignore, int(value)))

    def describe(self) -> str:
        """The declared form, e.g. ``unchanged=1,changed=2`` (read back by :meth:`parse`)."""
        parts = [
            f"{name}={'/'.join(str(v) for v in group)}"
            for name, group in (
                ("unchanged", self.unchanged),
                ("changed", self.changed),
                ("ignore", self.ignore),
            )
            if group
        ]
        return ",".join(parts)

    @classmethod
    def parse(cls, text: str) -> LabelEncoding:
        """Read ``unchanged=V[/V...],changed=V[/V...][,ignore=V[/V...]]``.

        Examples: ``unchanged=1,changed=2`` (OSCD), ``unchanged=0,changed=255,ignore=128``
        (Landsat Taizhou/Nanjing), ``unchanged=0,changed=1/2/3`` (several change classes).

        Raises
        ------
        DatasetError
            For malformed text, naming the expected form.
        """
        groups: dict[str, tuple[int, ...]] = {}
        try:
            for item in text.split(","):
                if not item.strip():
                    continue
                name, _, values = item.partition("=")
                name = name.strip().lower()
                if name not in ("unchanged", "changed", "ignore") or name in groups or not values.strip():
                    raise ValueError(item)
                groups[name] = tuple(int(v) for v in values.split("/"))
        except ValueError as exc:
            raise DatasetError(
                f"cannot read label values {text!r}: expected unchanged=V,changed=V[,ignore=V] with "
                "integers, several values joined by '/', e.g. unchanged=1,changed=2"
            ) from exc
        if "unchanged" not in groups or "changed" not in groups:
            raise DatasetError(
                f"label values {text!r} must name both unchanged= and changed=, e.g. unchanged=1,changed=2"
            )
        return cls(groups["unchanged"], groups["changed"], groups.get("ignore", ()))

    def encode(self, label: Array, *, where: str = "label") -> NDArray[np.uint8]:
        """Map a raw label to targets; every value must be one the encoding names.

        Parameters
        ----------
        label
            Raw label ``(H, W)`` of integer values (floats must hold whole numbers).
        where
            Name of the label in error messages (a file or a pair key).

        Raises
        ------
        DatasetError
            When a value is not named by the encoding.
        """
        raw = _integers(label, where)
        out = np.full(raw.shape, 254, dtype=np.uint8)  # 254: not named (never a target)
        for group, target in ((self.unchanged, 0), (self.changed, 1), (self.ignore, IGNORE_INDEX)):
            for value in group:
                out[raw == value] = target
        unknown = out == 254
        if unknown.any():
            extra = np.unique(raw[unknown])
            shown = ", ".join(str(int(v)) for v in extra[:8]) + (", ..." if extra.size > 8 else "")
            raise DatasetError(
                f"{where} holds value(s) {shown} that labels encoded {self.describe()} do not use; "
                "check that this label belongs with the others, or " + _DECLARE_HINT
            )
        return out


#: Encodings recognised by :func:`detect_label_encoding`, in order of preference.
KNOWN_ENCODINGS: tuple[LabelEncoding, ...] = (
    LabelEncoding((0,), (255,)),
    LabelEncoding((0,), (1,)),
    LabelEncoding((1,), (2,)),
    LabelEncoding((0,), (255,), (128,)),
)


def _integers(label: Array, where: str) -> NDArray[np.int64]:
    raw = np.asarray(label)
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise DatasetError(
                f"{where} holds non-integer or non-finite values; a change label must hold whole "
                "numbers (e.g. 0/255 or 1/2)"
            )
    elif raw.dtype.kind not in "uib":
        raise DatasetError(f"{where} has dtype {raw.dtype}; a change label must hold integers")
    return raw.astype(np.int64, copy=False)


def label_values(label: Array, *, where: str = "label") -> frozenset[int]:
    """The distinct raw values of a label.

    Raises
    ------
    DatasetError
        For non-integer values.
    """
    return frozenset(int(v) for v in np.unique(_integers(label, where)))


def _candidates(
    values: Iterable[int], ignore_value: int | None
) -> tuple[frozenset[int], list[LabelEncoding]]:
    present = frozenset(int(v) for v in values)
    found: list[LabelEncoding] = []
    for known in KNOWN_ENCODINGS:
        if ignore_value is not None and (ignore_value in known.unchanged or ignore_value in known.changed):
            continue
        encoding = known.with_ignore(ignore_value)
        if present <= encoding.values:
            found.append(encoding)
    return present, found


def _agree(present: frozenset[int], candidates: list[LabelEncoding]) -> bool:
    return all(len({c.meaning(v) for c in candidates}) == 1 for v in present)


def detect_label_encoding(
    values: Iterable[int], *, ignore_value: int | None = None, where: str = "labels"
) -> LabelEncoding:
    """The known encoding of the raw label values present (see the module docstring).

    Parameters
    ----------
    values
        Distinct raw values found, e.g. over all labels of one dataset folder
        (:func:`label_values` of each).
    ignore_value
        A raw value declared as "not labelled" (the CLI's ``--ignore-value``), added to every
        candidate encoding.
    where
        What the values came from, for error messages (a folder or a file).

    Returns
    -------
    LabelEncoding
        The first of :data:`KNOWN_ENCODINGS` that names every value present, when all that do
        agree on what each present value means.

    Raises
    ------
    DatasetError
        When the values fit no known encoding, or fit several that disagree (e.g. only 1s:
        changed in 0/1, unchanged in 1/2); the message names the values and says how to declare.
    """
    present, candidates = _candidates(values, ignore_value)
    shown = ", ".join(str(v) for v in sorted(present)[:8]) + (", ..." if len(present) > 8 else "")
    if not present:
        raise DatasetError(f"{where} hold no label values; add labels or {_DECLARE_HINT}")
    if not candidates:
        raise DatasetError(
            f"{where} hold the values {shown}, which fit none of the known change-label encodings "
            f"({'; '.join(e.describe() for e in KNOWN_ENCODINGS)}); {_DECLARE_HINT}. Masks with grey "
            "levels (e.g. JPEG-compressed or anti-aliased) must be binarised first"
        )
    if not _agree(present, candidates):
        readings = "; ".join(c.describe() for c in candidates)
        raise DatasetError(
            f"{where} hold only the value(s) {shown}, which mean different things in the encodings "
            f"they fit ({readings}); the change cannot be scored without knowing which, so " + _DECLARE_HINT
        )
    return candidates[0]


def detect_files_encoding(
    paths: Sequence[Path], *, ignore_value: int | None = None, where: str | None = None
) -> LabelEncoding:
    """Detect the encoding of a dataset from the values of all its label files together.

    Parameters
    ----------
    paths
        Label files of one dataset (every one is read).
    ignore_value
        A raw value declared as "not labelled".
    where
        What the labels are, for messages; default the folder of the first file.

    Raises
    ------
    DatasetError
        As :func:`detect_label_encoding`; the message also names a file holding each value.
    """
    first_with: dict[int, Path] = {}
    for path in paths:
        for value in label_values(_single_band(read_image(path), path), where=str(path)):
            first_with.setdefault(value, path)
    place = where or (f"the labels in {paths[0].parent}" if paths else "the labels")
    try:
        return detect_label_encoding(first_with, ignore_value=ignore_value, where=place)
    except DatasetError as exc:
        examples = ", ".join(f"{v} in {first_with[v].name}" for v in sorted(first_with)[:6])
        raise DatasetError(f"{exc} (values found: {examples})") from None


def encode_label(
    label: Array,
    encoding: LabelEncoding | None = None,
    *,
    ignore_value: int | None = None,
    where: str = "label",
) -> NDArray[np.uint8]:
    """Map a raw label to targets with a declared or detected encoding, strictly.

    Parameters
    ----------
    label
        Raw label ``(H, W)``.
    encoding
        The encoding; ``None`` detects it from this label's values alone
        (:func:`detect_label_encoding`).
    ignore_value
        A raw value declared as "not labelled", added to the encoding.
    where
        Name of the label in error messages.

    Raises
    ------
    DatasetError
        For values the encoding does not name, or labels whose encoding cannot be detected.
    """
    if encoding is None:
        encoding = detect_label_encoding(
            label_values(label, where=where), ignore_value=ignore_value, where=where
        )
    return encoding.with_ignore(ignore_value).encode(label, where=where)


def change_target(
    label: Array,
    *,
    ignore_value: int | None = None,
    threshold: int = 127,
    encoding: LabelEncoding | None = None,
) -> NDArray[np.uint8]:
    """Map a raw change label to the target ``0`` / ``1`` / :data:`IGNORE_INDEX`.

    Parameters
    ----------
    label
        Raw label ``(H, W)``: 0/255, 0/1 or 1/2 masks, or masks with an ignore value.
    ignore_value
        Raw value meaning "not labelled" (e.g. 128); becomes :data:`IGNORE_INDEX`.
    threshold
        Only for labels whose values fit no known encoding (grey levels): raw values above it
        are "changed" (a label holding only 0 and 1 apart from the ignore value is 0/1).
    encoding
        Declared encoding; ``None`` detects it from the label (:func:`detect_label_encoding`).

    Returns
    -------
    numpy.ndarray
        ``uint8`` target of the same shape.

    Raises
    ------
    DatasetError
        When the label's values fit several known encodings that disagree (e.g. only 1s).
    """
    if encoding is not None:
        return encoding.with_ignore(ignore_value).encode(label)
    raw = np.asarray(label).astype(np.int64, copy=False)
    present, candidates = _candidates(np.unique(raw).tolist(), ignore_value)
    if candidates:
        if not _agree(present, candidates):
            detect_label_encoding(present, ignore_value=ignore_value, where="the label")  # raises
        return candidates[0].encode(raw)
    scored = raw if ignore_value is None else raw[raw != ignore_value]
    binary01 = scored.size > 0 and bool(np.isin(scored, (0, 1)).all())
    target = (raw != 0) if binary01 else (raw > threshold)
    out = target.astype(np.uint8)
    if ignore_value is not None:
        out[raw == ignore_value] = IGNORE_INDEX
    return out
