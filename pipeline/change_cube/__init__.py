"""The change cube: the Zarr store the inference engine fills block by block, and how it is restarted.

Layout
------
All spatial variables share the input cube's ``y``/``x`` grid, CRS (CF ``spatial_ref`` plus GDAL's
``_CRS`` attribute) and transform; they are chunked in square ``block_size`` blocks, one chunk per
block and per variable, so no two tasks ever write the same chunk.

==========================  ========  =======  ==================================================
variable                    dtype     nodata   meaning
==========================  ========  =======  ==================================================
``change_probability``      float32   NaN      blended probability of change (agnostic head)
``change``                  uint8     255      1 where ``change_probability > 0.5``, else 0
``class_before``            uint8     255      class channel on the before date (argmax)
``class_after``             uint8     255      class channel on the after date (argmax)
``transition``              uint16    65535    ``class_before * K + class_after`` where changed,
                                               65534 (:data:`TRANSITION_NO_CHANGE`) where not
``target_change``           uint8     255      per target class (``target`` dimension): 1 where
                                               changed and either date is that class, else 0
``block_done``              uint8     (0)      1 once a block is completely written
==========================  ========  =======  ==================================================

Every layer lists ``spatial_ref`` in its ``coordinates`` and ``grid_mapping`` attributes, so a
plain ``xr.open_zarr`` gives ``.rio.crs`` and ``.rio.transform()``. In Zarr v3 (the default) the
integer layers' nodata is the array ``fill_value`` and a ``nodata`` attribute (no CF
``_FillValue``), so they open as integers; the probability's nodata is CF ``_FillValue`` NaN. The
``target`` labels are variable-length strings (Zarr v3 ``string``); in Zarr v2 they are
fixed-width and nodata is CF ``_FillValue`` (open with ``mask_and_scale=False`` to keep integers).

Class channels follow the :class:`~seg2change_core.prompts.PromptSet` order (background first when
there is one); ``K`` is their number and the labels are in the ``classes`` attribute and in CF
``flag_values``/``flag_meanings`` of the class maps. A pixel is nodata in every layer when any band
the models read is NaN on either date. Class maps, transition and binary change are derived
*after* blending, through :func:`seg2change_core.fusion.fuse`, so nothing is thresholded per tile.

Root attributes (their names are the ``ATTR_*`` constants): ``format`` (:data:`FORMAT`), ``job``
(the job, JSON), ``inference`` (the inference-relevant fields the fingerprint hashes, JSON),
``fingerprint``, ``models`` (name, source, checkpoint SHA-256 or ``"none"``, JSON), ``model_fit``
(values fitted once per job, JSON), ``software``, ``block_size``, ``classes`` (JSON), ``complete``
(true once every block is done). Metadata is consolidated at creation and again on completion.

Restarting
----------
``block_done`` has one chunk per block. A task writes all of its block's chunks and only then
sets its ``block_done`` element. Each chunk is stored as one object: on a local disk zarr writes a
temporary file and renames it over the chunk (atomic within one file system), on object stores a
PUT is atomic. A run killed at any moment therefore leaves every block either marked done with all
of its chunks in place, or unmarked; unmarked blocks are recomputed in full by the next run, which
overwrites whatever partial chunks they left, so the finished cube has the same bytes as an
uninterrupted run. An unreadable marker (never expected, given atomic writes) counts as not done.

Creation is detectably incomplete: :func:`create_change_cube` first writes a creation marker
beside the cube (``.change_cube.zarr.creating``), then the cube, and removes the marker last. A run
that finds the marker (its predecessor was killed while creating) deletes the half-made cube and
creates it again; a creation task that Dask runs a second time (its first result lost with a
worker) finds the finished cube of the same job and leaves it as it is. Finalisation writes
``complete`` into the root metadata and consolidates again; a run killed between the last block
and ``complete`` finds every block done and only finalises.

Where it lies
-------------
Every function takes a local path or an fsspec URL (:class:`~pipeline.storage.Location`); on an
object store (``s3://bucket/prefix/change_cube.zarr``) each Dask worker writes its blocks' chunks
and markers there directly through zarr's ``FsspecStore``, so workers on other machines need
only the same credentials, never a shared disk.

Modules
-------
This package owns the change cube: it writes it, reads it and names its attributes.

- :mod:`~pipeline.change_cube.schema`: names, nodata values, the block grid and the block layers;
- :mod:`~pipeline.change_cube.create`: the empty cube (metadata and coordinates);
- :mod:`~pipeline.change_cube.state`: what an output path holds, whether a job may write there;
- :mod:`~pipeline.change_cube.blocks`: the block writes, their completion markers, finalisation;
- :mod:`~pipeline.change_cube.read`: opening a cube, and the description publishing reads.
"""

from pipeline.change_cube.blocks import finalise_change_cube, read_done, write_block
from pipeline.change_cube.create import create_change_cube
from pipeline.change_cube.read import ChangeCubeInfo, describe_change_cube, open_change_cube
from pipeline.change_cube.schema import (
    ATTR_BLOCK_SIZE,
    ATTR_CLASSES,
    ATTR_COMPLETE,
    ATTR_FINGERPRINT,
    ATTR_FORMAT,
    ATTR_INFERENCE,
    ATTR_JOB,
    ATTR_MODEL_FIT,
    ATTR_MODELS,
    ATTR_PROMPTS,
    ATTR_SOFTWARE,
    ATTR_SOFTWARE_VERSION,
    ATTR_TILING,
    ATTR_TORCH_THREADS,
    DONE,
    FORMAT,
    LAYERS,
    TRANSITION_NO_CHANGE,
    TRANSITION_NODATA,
    UINT8_NODATA,
    BlockGrid,
    BlockLayers,
    ChangeCubeLayout,
)
from pipeline.change_cube.state import (
    CubeState,
    change_cube_is_complete,
    check_reusable,
    creation_marker,
    inspect_change_cube,
    remove_change_cube,
)

__all__ = [
    "ATTR_BLOCK_SIZE",
    "ATTR_CLASSES",
    "ATTR_COMPLETE",
    "ATTR_FINGERPRINT",
    "ATTR_FORMAT",
    "ATTR_INFERENCE",
    "ATTR_JOB",
    "ATTR_MODELS",
    "ATTR_MODEL_FIT",
    "ATTR_PROMPTS",
    "ATTR_SOFTWARE",
    "ATTR_SOFTWARE_VERSION",
    "ATTR_TILING",
    "ATTR_TORCH_THREADS",
    "DONE",
    "FORMAT",
    "LAYERS",
    "TRANSITION_NODATA",
    "TRANSITION_NO_CHANGE",
    "UINT8_NODATA",
    "BlockGrid",
    "BlockLayers",
    "ChangeCubeInfo",
    "ChangeCubeLayout",
    "CubeState",
    "change_cube_is_complete",
    "check_reusable",
    "create_change_cube",
    "creation_marker",
    "describe_change_cube",
    "finalise_change_cube",
    "inspect_change_cube",
    "open_change_cube",
    "read_done",
    "remove_change_cube",
    "write_block",
]
