"""Label quality and review: suspect labels, uncertain traffic, Label Studio, reviews back into the data."""
