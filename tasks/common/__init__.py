"""What several stages share and nothing else: params.yaml models, shared paths, the stage CLI, file helpers."""
