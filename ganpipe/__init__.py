"""ganpipe: a GAN MLOps pipeline (DVC stages, Prefect flows, MLflow tracking and registry)."""

__version__ = "0.1.0"
