"""The recipe search behind `python -m tasks.tune`: its search space and its Optuna study."""
