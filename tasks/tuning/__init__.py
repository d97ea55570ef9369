"""The recipe search behind `python -m tasks.tune`: its settings (params.yaml's `tune`), its search space,
its Optuna study, one command's search over tune.parallel processes, one trial's score, the study's
HTML page, and writing the best recipe back."""
