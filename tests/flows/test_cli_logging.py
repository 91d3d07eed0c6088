"""The command line's logging: ours at the asked level, Dask's cluster chatter only with -vv."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from distributed import Client, LocalCluster

from flows.cli import _main

TOUCHED = ("", "pipeline", "flows", "seg2change_core", "distributed")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in TOUCHED}
    handlers = logging.getLogger().handlers[:]
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
def test_dask_info_is_silent_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    _main(verbose=1)
    assert logging.getLogger("pipeline").level == logging.INFO
    logging.getLogger().addHandler(caplog.handler)
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: None)
    assert not [r for r in caplog.records if r.name.startswith("distributed") and r.levelno < logging.WARNING]
    _main(verbose=2)
    assert logging.getLogger("distributed").level == logging.DEBUG
