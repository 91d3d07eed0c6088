"""Change targets: a raw change label becomes ``0`` (unchanged), ``1`` (changed) or ignored.

A raw change label becomes a training/evaluation target of ``0`` (unchanged), ``1`` (changed) or
:data:`IGNORE_INDEX` (255, not scored) by :func:`change_target`: labels holding only 0 and 1 (apart
from the ignore value) are taken as they are; any other label is binarised with ``label > 127``
(so 8-bit 0/255 masks work). An explicit ``ignore_value`` (e.g. 128, "not labelled", in the Landsat
Taizhou/Nanjing labels) becomes 255 after that mapping.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from seg2change_core.datasets.images import Array

__all__ = ["IGNORE_INDEX", "change_target"]

#: Target value of pixels that are not trained on or scored.
IGNORE_INDEX = 255


def change_target(
    label: Array, *, ignore_value: int | None = None, threshold: int = 127
) -> NDArray[np.uint8]:
    """Map a raw change label to the target ``0`` / ``1`` / :data:`IGNORE_INDEX`.

    Parameters
    ----------
    label
        Raw label ``(H, W)``: 0/255 masks, 0/1 masks, or masks with an ignore value.
    ignore_value
        Raw value meaning "not labelled" (e.g. 128); becomes :data:`IGNORE_INDEX`. A 0/1 label
        with unlabelled pixels must mark them with this value (it is left out when telling 0/1
        labels from 0/255 ones): a raw 255 beside 0 and 1 makes the label a 0/255 one, in which
        1 is "unchanged".
    threshold
        Raw values above it are "changed" (unless the label holds only 0 and 1).

    Returns
    -------
    numpy.ndarray
        ``uint8`` target of the same shape.
    """
    raw = np.asarray(label).astype(np.int64, copy=False)
    scored = raw if ignore_value is None else raw[raw != ignore_value]
    binary01 = scored.size > 0 and bool(np.isin(scored, (0, 1)).all())
    target = (raw != 0) if binary01 else (raw > threshold)
    out = target.astype(np.uint8)
    if ignore_value is not None:
        out[raw == ignore_value] = IGNORE_INDEX
    return out
