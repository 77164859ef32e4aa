"""Run the service with uvicorn (``clearvae serve``)."""

from __future__ import annotations

import logging
import os
import sys

import torch
import uvicorn

from clearvae.service.app import create_app
from clearvae.service.settings import ServiceSettings


def serve(settings: ServiceSettings) -> None:
    """Serve until interrupted. Each worker's torch ops get an equal share of the cores."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: "
                        "%(message)s")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
    if not settings.loopback and settings.token is None:
        print(f"clearvae serve: warning: listening on {settings.host} without a token: anyone "
              "who can reach this address can use the service (give --token)", file=sys.stderr)
    # connections at once: what the workers and the queue hold, and as many again arriving;
    # beyond that uvicorn answers 503 before reading anything
    concurrency = 2 * (settings.workers + settings.queue) + 8
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                limit_concurrency=concurrency, timeout_keep_alive=5, log_level="info")
