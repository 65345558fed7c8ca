"""The lowest layer: errors, typed params, paths, atomic I/O, caches, locks, devices, images, MLflow tracking and the DVC helpers. Imports nothing else of ganpipe."""
