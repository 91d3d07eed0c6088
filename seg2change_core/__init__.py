"""seg2change_core: the models and their maths (CACH, backbones, segmenters, fusion, metrics).

Pure PyTorch/NumPy. Knows nothing about STAC, Dask, Zarr or Prefect.
"""

from importlib.metadata import PackageNotFoundError, version

from seg2change_core.errors import Seg2ChangeError

try:
    #: The installed distribution's version; ``version`` in pyproject.toml is its one source.
    __version__ = version("seg2change")
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = ["Seg2ChangeError", "__version__"]
