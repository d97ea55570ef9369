"""The network: pretrained backbones, preprocessing transforms, the saved bundle, devices, the production pointer."""
