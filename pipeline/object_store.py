"""Former home of the local S3 server, now :mod:`pipeline.local_servers.object_store`.

Kept as a re-export because tests/conftest.py and tests/infra/test_notebooks.py import these names
from here.
"""

from pipeline.local_servers.object_store import S3Server, SeaweedServer, find_weed

__all__ = ["S3Server", "SeaweedServer", "find_weed"]
