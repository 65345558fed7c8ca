"""The nightly training flow (Prefect deployment entry point `flows/training_pipeline.py:training_pipeline`).

The flow and its tasks live in `ganpipe.orchestration.pipeline`: `ganpipe run` and `ganpipe schedule`
use them from the installed package; this file is where `prefect deploy` and readers find them.
"""

from ganpipe.orchestration.pipeline import training_pipeline

__all__ = ["training_pipeline"]

if __name__ == "__main__":
    training_pipeline()
