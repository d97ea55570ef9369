"""What several stages share and nothing else: params.yaml models and the keys a stage may read, shared
paths, the stage CLI, file helpers, parallel maps over files, the compute threads of a process, and
dvc.yaml's code and params deps."""
