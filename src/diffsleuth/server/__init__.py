"""HTTP service: the same detectors and decoding as the CLI, behind FastAPI."""
