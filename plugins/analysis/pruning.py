"""Pruning masks as buffers re-applied on every forward pass (open_lth's ``PrunedModel``), and global magnitude
pruning.

A pruned parameter ``weight`` of a module gets a buffer ``weight_mask``; a forward pre-hook on that module
multiplies the parameter by its mask before the module runs. The optimiser therefore never knows about
sparsity: a pruned weight may move during a step, but it is zero again before it is used, and the masks travel
with the module's ``state_dict`` into checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from framework.api import RtlabError

SELECTIONS = ("weights", "all")
MASK_SUFFIX = "_mask"


def prunable_names(net: nn.Module, selection: str) -> list[str]:
    """Names of the parameters IMP prunes: ``weights`` = the weights of every convolution and linear layer;
    ``all`` = every parameter (biases and normalisation affines too, as the paper's reference code did)."""
    if selection not in SELECTIONS:
        raise RtlabError(f"analysis.prune must be one of {', '.join(SELECTIONS)}, got '{selection}'")
    if selection == "all":
        return [n for n, _ in net.named_parameters()]
    names = []
    for mod_name, module in net.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module.weight is not None:
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def _split(name: str) -> tuple[str, str]:
    owner, _, param = name.rpartition(".")
    return owner, param


def _reapply_masks(module: nn.Module, args) -> None:
    for param in module._rtlab_masked:  # type: ignore[attr-defined]
        # .data: zeroing in place must not bump the autograd version (a module may run twice per step)
        getattr(module, param).data.mul_(getattr(module, param + MASK_SUFFIX))


def attach_masks(net: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach (or replace) the masks of ``net``'s parameters by name and zero the pruned weights now."""
    for name, mask in masks.items():
        owner_name, param = _split(name)
        owner = net.get_submodule(owner_name) if owner_name else net
        weight = getattr(owner, param, None)
        if not isinstance(weight, nn.Parameter):
            raise RtlabError(f"cannot prune '{name}': the network has no such parameter")
        if tuple(mask.shape) != tuple(weight.shape):
            raise RtlabError(f"the mask of '{name}' has shape {tuple(mask.shape)}, the parameter {tuple(weight.shape)}")
        mask = mask.to(device=weight.device, dtype=weight.dtype)
        buffer = param + MASK_SUFFIX
        if hasattr(owner, "_rtlab_masked") and param in owner._rtlab_masked:
            getattr(owner, buffer).copy_(mask)
        else:
            owner.register_buffer(buffer, mask.clone())
            if not hasattr(owner, "_rtlab_masked"):
                owner._rtlab_masked = []
                owner.register_forward_pre_hook(_reapply_masks)
            owner._rtlab_masked.append(param)
        _reapply_masks(owner, ())


def masks_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to ``net``, by parameter name."""
    out = {}
    for mod_name, module in net.named_modules():
        for param in getattr(module, "_rtlab_masked", ()):
            out[f"{mod_name}.{param}" if mod_name else param] = getattr(module, param + MASK_SUFFIX)
    return out


def apply_masks(net: nn.Module) -> None:
    """Zero the pruned weights now (they are zeroed before every forward pass anyway)."""
    for module in net.modules():
        if getattr(module, "_rtlab_masked", None):
            _reapply_masks(module, ())


@torch.no_grad()
def global_magnitude_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], fraction: float
                           ) -> dict[str, torch.Tensor]:
    """New masks that additionally prune ``fraction`` of the still-unpruned weights, those of smallest magnitude
    over all tensors together (ties broken by position)."""
    if not 0.0 < fraction < 1.0:
        raise RtlabError(f"analysis.fraction must be in (0, 1), got {fraction}")
    names = list(weights)
    flat_scores = []
    for n in names:
        w = weights[n].detach().float().cpu().flatten().abs()
        alive = masks[n].detach().cpu().flatten() > 0 if n in masks else torch.ones_like(w, dtype=torch.bool)
        flat_scores.append(torch.where(alive, w, torch.full_like(w, float("inf"))))
    scores = torch.cat(flat_scores)
    alive_count = int(torch.isfinite(scores).sum())
    k = int(round(fraction * alive_count))
    keep = torch.isfinite(scores)
    if k:
        keep[torch.topk(scores, k, largest=False).indices] = False
    out, start = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = keep[start:start + size].view_as(weights[n]).to(torch.float32)
        start += size
    return out
