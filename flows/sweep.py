"""The hyperparameter sweep flow (entry point `flows/sweep.py:sweep`); defined in `ganpipe.orchestration.sweep_flow`."""

from ganpipe.orchestration.sweep_flow import sweep

__all__ = ["sweep"]

if __name__ == "__main__":
    sweep()
