"""Networks and the machines they run on: device and precision choices, torchrun process groups, timm backbones with
their heads, placement of tensors and networks, and safetensors checkpoints. Imports only ``_base``. Internal:
plugins import from ``framework.api``."""
