"""The images under data.root: listing, manifest, duplicates, Great Expectations checks and their report
(Data Docs readable offline), decoding to RGB, the split manifests and folds, and whether data.root changed."""
