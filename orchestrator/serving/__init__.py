"""Serving a registered model over HTTP: the FastAPI app with its limits and micro-batching
(serve), or as Ray Serve replicas (serve_ray). Reads the registry through
``orchestrator.tracking.registry`` and the pickle-free ``orchestrator.core.modelfile``."""
