"""Names in the input cube: its variables, epochs and root attributes.

Every module that writes or reads the input cube spells these names through this module, so the
cube's schema is written down once.
"""

from __future__ import annotations

__all__ = [
    "ATTR_COMPLETE",
    "ATTR_JOB",
    "ATTR_PROVENANCE",
    "ATTR_SOFTWARE",
    "CLEAR_COUNT",
    "EPOCHS",
    "INPUT_FINGERPRINT",
    "REFLECTANCE",
]

#: Variable ``reflectance(epoch, band, y, x)``: float32 median surface reflectance, NaN nodata.
REFLECTANCE = "reflectance"
#: Variable ``clear_count(epoch, y, x)``: uint8 number of clear observations per composite pixel.
CLEAR_COUNT = "clear_count"
#: Labels of the ``epoch`` coordinate, in order.
EPOCHS = ("before", "after")

#: Root attribute: the job the cube was made for (JSON of :class:`pipeline.spec.JobSpec`).
ATTR_JOB = "job"
#: Root attribute: the STAC items used (JSON of :meth:`pipeline.discover.Discovery.provenance`).
ATTR_PROVENANCE = "provenance"
#: Root attribute: the name and version of the software that wrote the cube.
ATTR_SOFTWARE = "software"
#: Root attribute: the :func:`pipeline.cube.input_fingerprint` of the job and items the cube was made from.
INPUT_FINGERPRINT = "input_fingerprint"
#: Root attribute: true once every block and the consolidated metadata are written.
ATTR_COMPLETE = "complete"
