"""Label quality and review: out-of-fold probabilities and suspect labels (cleanlab) with their page,
uncertain served images and the service's review queue, Label Studio, reviews back into the data."""
