"""harness: a benchmark harness for recurrent neural networks.

Experiment files (TOML) become validated settings; an Optuna study samples architectures
and hyperparameters; one training loop trains every (architecture, task) pair; every trial
is an MLflow run; reports are rendered from what MLflow holds.
"""

__version__ = "0.1.0"
