"""The training engine behind the train stage (and the label folds and tuning trials): one run's set-up,
inputs, image cache, batches, batch augmentation, strategies, optimizer, step, loop, checkpoints,
data-parallel processes, the shipped model, K folds, and the training curves."""
