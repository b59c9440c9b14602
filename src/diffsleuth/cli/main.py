"""Entry point: ``diffsleuth`` (console script) and ``python -m diffsleuth``."""

from diffsleuth.cli import calibrate, card, evaluate, extract, scan, scan_ray, serve, train, weights  # noqa: F401  (commands register on import)
from diffsleuth.cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
