"""MLflow models-from-code entry point of the registered generator.

MLflow executes this file when it logs and loads the model; ganpipe never imports it.
Defining the model from code means the registry stores no pickle.
"""

import mlflow

from ganpipe.serving.pyfunc import GeneratorModel

mlflow.models.set_model(GeneratorModel())
