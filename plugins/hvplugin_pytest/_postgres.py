"""Finding a real PostgreSQL for users' integration tests: a DSN from the environment, else testcontainers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DSN_VARIABLE = "HYPERVAULT_TEST_DSN"
IMAGE_VARIABLE = "HYPERVAULT_TEST_IMAGE"
DEFAULT_IMAGE = "postgres:16-alpine"

__all__ = ["DSN_VARIABLE", "IMAGE_VARIABLE", "docker_available", "postgres_server"]


def docker_available() -> str | None:
    """None if a Docker engine answers, else the reason it cannot be used."""
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed (pip install 'hypervault[dev]' or testcontainers)"
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:  # any failure means: no usable engine here
        return f"no Docker engine answers ({type(exc).__name__})"
    return None


@contextmanager
def postgres_server() -> Iterator[tuple[dict[str, Any] | None, str]]:
    """Yield (connection settings, where they came from), or (None, why not) when no server can be had."""
    dsn = os.environ.get(DSN_VARIABLE)
    if dsn:
        yield {"conninfo": dsn}, f"${DSN_VARIABLE}"
        return
    reason = docker_available()
    if reason is not None:
        yield None, f"set {DSN_VARIABLE} to a throwaway database's DSN, or run Docker: {reason}"
        return
    from testcontainers.postgres import PostgresContainer

    image = os.environ.get(IMAGE_VARIABLE, DEFAULT_IMAGE)
    with PostgresContainer(image, driver=None) as container:
        settings = {
            "host": container.get_container_host_ip(),
            "port": int(container.get_exposed_port(5432)),
            "user": container.username,
            "password": container.password,
            "dbname": container.dbname,
        }
        yield settings, f"testcontainers ({image})"
