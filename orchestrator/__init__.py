"""Find the bias/variance sweet spot at cluster scale: Ray Train + Ray Tune + MLflow."""

__version__ = "0.1.0"
