"""The MLflow model registry: model references, packaging, aliases, the gate and the `register` stage.

The only sub-package that talks to the MLflow registry."""
