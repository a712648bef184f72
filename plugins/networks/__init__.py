"""Networks: what a backbone name builds and what sits on top of it.

Plugins (each registered by its module name):

* ``backbones`` — backbone adapters (kind ``backbone``): how each timm family takes small inputs and is initialised;
* ``cifar_nets`` — the paper's VGG11 without BN and CIFAR ResNet20/56, registered as timm models;
* ``adapted`` — ``rtlab_backbone``, a timm model name for a backbone as rtlab's adapters built it (small-input
  stems, norm swaps), so ``rtlab export`` folders of such networks load with timm;
* ``heads`` — the DINO projection head with the L2 bottleneck (kind ``head``).

Helpers (not plugins): ``norm_layers`` — the BN/GN/LN/Identity layers of the norm-layer swap.
"""
