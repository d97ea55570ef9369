"""The training engine behind the train stage: batches, augmentation, strategies, optimizer, step, checkpoints."""
