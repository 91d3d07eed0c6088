"""Bi-temporal change-detection datasets: readers, labels, augmentation and splits.

Every name is importable from ``seg2change_core.datasets``; the modules hold one concern each:

* :mod:`~seg2change_core.datasets.images`: :func:`read_image` (rasterio, every GDAL format);
* :mod:`~seg2change_core.datasets.labels`: :data:`IGNORE_INDEX`, :class:`LabelEncoding` (declared or
  detected per dataset), :func:`encode_label`, :func:`change_target`;
* :mod:`~seg2change_core.datasets.pairs`: :class:`ChangePair`, :class:`FolderPair`, the
  :class:`PairSource` protocol;
* :mod:`~seg2change_core.datasets.folder`: the ``A/``, ``B/``, ``label/`` layout
  (:func:`scan_folder`, :func:`scan_folders`);
* :mod:`~seg2change_core.datasets.augmentation`: :func:`augment_arrays` (geometry shared by both
  dates) and :class:`ChangeAugmentation` (per-date photometry, zoom, date swap, unchanged pairs,
  pasted synthetic change);
* :mod:`~seg2change_core.datasets.sampling`: :func:`balanced_samples` (crops per pair by area and
  change);
* :mod:`~seg2change_core.datasets.dataset`: :class:`ChangeDetectionDataset`, :class:`Sample`,
  :class:`Batch`, :func:`collate_samples`;
* :mod:`~seg2change_core.datasets.statistics`: :func:`value_scale`, :func:`default_band_names`,
  :func:`band_statistics`;
* :mod:`~seg2change_core.datasets.splits`: :class:`Split`, :func:`split_by_source`,
  :func:`source_image`;
* :mod:`~seg2change_core.datasets.oscd`: OSCD (Sentinel-2) in its native layout
  (:func:`scan_oscd`, :class:`OSCDCity`, :data:`OSCD_BANDS`);
* :mod:`~seg2change_core.datasets.scan`: :func:`scan_datasets` recognises A/B/label folders, OSCD
  roots and single OSCD cities;
* :mod:`~seg2change_core.datasets.bands`: band selection by name or position
  (:func:`select_bands`, :func:`bands_for_model`);
* :mod:`~seg2change_core.datasets.scale`: the input-scale check (:func:`check_input_scale`).
"""

from seg2change_core.datasets.augmentation import ChangeAugmentation, augment_arrays
from seg2change_core.datasets.bands import (
    NamedBandSource,
    SelectedBands,
    band_count,
    band_names_of,
    bands_for_model,
    select_bands,
)
from seg2change_core.datasets.dataset import Batch, ChangeDetectionDataset, Sample, collate_samples
from seg2change_core.datasets.folder import scan_folder, scan_folders
from seg2change_core.datasets.images import IMAGE_SUFFIXES, read_image
from seg2change_core.datasets.labels import (
    IGNORE_INDEX,
    KNOWN_ENCODINGS,
    LabelEncoding,
    change_target,
    detect_files_encoding,
    detect_label_encoding,
    encode_label,
    label_values,
)
from seg2change_core.datasets.oscd import (
    OSCD_BANDS,
    S2_BAND_IDS,
    S2_RESOLUTION,
    OSCDCity,
    read_s2_bands,
    resolve_s2_band,
    scan_oscd,
)
from seg2change_core.datasets.pairs import ChangePair, FolderPair, PairSource
from seg2change_core.datasets.sampling import balanced_samples
from seg2change_core.datasets.scale import (
    InputScale,
    InputScaleWarning,
    check_input_scale,
    classify_input_scale,
    expected_input_scale,
)
from seg2change_core.datasets.scan import dataset_kind, dataset_of, scan_datasets
from seg2change_core.datasets.splits import Split, source_image, split_by_source
from seg2change_core.datasets.statistics import band_statistics, default_band_names, value_scale

__all__ = [
    "ChangeAugmentation",
    "balanced_samples",
    "Batch",
    "ChangeDetectionDataset",
    "ChangePair",
    "FolderPair",
    "IGNORE_INDEX",
    "IMAGE_SUFFIXES",
    "InputScale",
    "InputScaleWarning",
    "KNOWN_ENCODINGS",
    "LabelEncoding",
    "NamedBandSource",
    "OSCDCity",
    "OSCD_BANDS",
    "PairSource",
    "S2_BAND_IDS",
    "S2_RESOLUTION",
    "Sample",
    "SelectedBands",
    "Split",
    "augment_arrays",
    "band_count",
    "band_names_of",
    "band_statistics",
    "bands_for_model",
    "change_target",
    "check_input_scale",
    "classify_input_scale",
    "collate_samples",
    "dataset_kind",
    "dataset_of",
    "default_band_names",
    "detect_files_encoding",
    "detect_label_encoding",
    "encode_label",
    "expected_input_scale",
    "label_values",
    "read_image",
    "read_s2_bands",
    "resolve_s2_band",
    "scan_datasets",
    "scan_folder",
    "scan_folders",
    "scan_oscd",
    "select_bands",
    "source_image",
    "split_by_source",
    "value_scale",
]
