"""The network: pretrained backbones, training transforms, preprocessing for evaluation and serving (Pillow
and NumPy), the saved bundle and its sidecar, devices, the production pointer and the BentoML store,
lineage, the ONNX export and its int8 variants, and the model in its serving runtime."""
