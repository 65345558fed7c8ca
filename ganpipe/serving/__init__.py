"""Using a registered generator: generation, the HTTP server launcher and the MLflow pyfunc.

`GeneratorModel` stays importable here: versions registered before ganpipe was split into
sub-packages ship a `pyfunc_entry.py` that does `from ganpipe.serving import GeneratorModel`.
"""

from ganpipe.serving.pyfunc import GeneratorModel

__all__ = ["GeneratorModel"]
