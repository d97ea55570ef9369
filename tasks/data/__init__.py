"""The images under data.root: listing, manifest, duplicates, decoding to RGB, and the split manifests."""
