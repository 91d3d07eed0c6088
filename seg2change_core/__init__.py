"""seg2change_core: the models and their maths (CACH, backbones, segmenters, fusion, metrics).

Pure PyTorch/NumPy. Knows nothing about STAC, Dask, Zarr or Prefect.
"""

from seg2change_core.errors import Seg2ChangeError

__version__ = "0.1.0"

__all__ = ["Seg2ChangeError", "__version__"]
