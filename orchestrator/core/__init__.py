"""The core: torch, numpy and pyarrow only (no Ray, no MLflow): data, model, metrics,
the training loop, checkpoints, the pickle-free model format, the diagnosis, the ASHA
ladder, the trial ledger and cluster bin-packing. Testable in milliseconds."""
