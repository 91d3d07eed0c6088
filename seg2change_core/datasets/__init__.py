"""Bi-temporal change-detection datasets: readers, labels, augmentation and splits.

Every name is importable from ``seg2change_core.datasets``; the modules hold one concern each:

* :mod:`~seg2change_core.datasets.images`: :func:`read_image` (rasterio, every GDAL format);
* :mod:`~seg2change_core.datasets.labels`: :data:`IGNORE_INDEX`, :func:`change_target`;
* :mod:`~seg2change_core.datasets.pairs`: :class:`ChangePair`, :class:`FolderPair`, the
  :class:`PairSource` protocol;
* :mod:`~seg2change_core.datasets.folder`: the ``A/``, ``B/``, ``label/`` layout
  (:func:`scan_folder`, :func:`scan_folders`);
* :mod:`~seg2change_core.datasets.augmentation`: :func:`augment_arrays`;
* :mod:`~seg2change_core.datasets.dataset`: :class:`ChangeDetectionDataset`, :class:`Sample`,
  :class:`Batch`, :func:`collate_samples`;
* :mod:`~seg2change_core.datasets.statistics`: :func:`value_scale`, :func:`default_band_names`,
  :func:`band_statistics`;
* :mod:`~seg2change_core.datasets.splits`: :class:`Split`, :func:`split_by_source`,
  :func:`source_image`.
"""

from seg2change_core.datasets.augmentation import augment_arrays
from seg2change_core.datasets.dataset import Batch, ChangeDetectionDataset, Sample, collate_samples
from seg2change_core.datasets.folder import scan_folder, scan_folders
from seg2change_core.datasets.images import IMAGE_SUFFIXES, read_image
from seg2change_core.datasets.labels import IGNORE_INDEX, change_target
from seg2change_core.datasets.pairs import ChangePair, FolderPair, PairSource
from seg2change_core.datasets.splits import Split, source_image, split_by_source
from seg2change_core.datasets.statistics import band_statistics, default_band_names, value_scale

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_SUFFIXES",
    "Batch",
    "ChangeDetectionDataset",
    "ChangePair",
    "FolderPair",
    "PairSource",
    "Sample",
    "Split",
    "augment_arrays",
    "band_statistics",
    "change_target",
    "collate_samples",
    "default_band_names",
    "read_image",
    "scan_folder",
    "scan_folders",
    "source_image",
    "split_by_source",
    "value_scale",
]
