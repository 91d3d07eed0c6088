"""flows: Prefect flows and the ``seg2change`` command line, thin layers over ``pipeline``."""
