"""``clp``: Channel Lipschitzness-based Pruning (Zheng et al., ECCV 2022), data-free.

For every conv layer followed directly by a BatchNorm, the upper bound of the channel Lipschitz
constant (UCLC) of output channel k is the spectral norm of that channel's filter scaled by the BN:

    UCLC_k = σ_max( W_k · γ_k / sqrt(var_k + eps) ),   W_k reshaped to (C_in, kh·kw).

Within each layer, channels with ``UCLC_k > mean + u·std`` (over the layer's channels; ``std`` is
the unbiased standard deviation) are pruned: conv filter (and bias), γ and β of its BN are zeroed.
No data are read, no training happens: ``clean`` is ignored (a test checks it is never touched),
and the run takes milliseconds.

Settings (``defenses.<id>``, declared in ``backdoor.schema.defenses.CLP``): ``u`` 3.0 (the paper's
and BackdoorBench's CIFAR default). ``trace_size`` 32: the side of the synthetic constant image
used once to find which BN follows which conv (not data; the model's global pooling makes the size
irrelevant).

Deviations, and why:

- **Conv → BN pairs by tracing**, not by registration order: a BN counts only if its input is
  exactly that conv's output. Convs with no BN of their own (PreActResNet18's block ``conv2`` and
  shortcuts, which feed a residual sum) are skipped: their UCLC would need the scale of a BN that
  also normalises the skip path, and zeroing that BN's channel would remove the skip channel too.
  (PreActResNet18's stem conv is paired with ``layer1.0.bn1``, which it feeds directly, although
  its output also goes down the identity skip.) On the compact CNN every conv has its own BN, so
  nothing is skipped. (The released code pairs each BN with the conv registered just before it.)
- **Filter, γ and β all zeroed**, so a pruned channel outputs exactly 0 (after its BN and ReLU)
  rather than a constant: the unambiguous reading of "prune the channel".
- ``|γ|`` is used (the sign of γ does not change a spectral norm).

``info`` reports, per conv, the number of channels, the threshold and the pruned channels.
"""

from __future__ import annotations

import torch
from torch import nn

from ..schema.defenses import CLP
from .channels import probe_input, trace, zero_channels

@torch.no_grad()
def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """UCLC per output channel: spectral norm of the BN-scaled filter, shape (C_out,)."""
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)).abs() / torch.sqrt(
        bn.running_var + bn.eps)
    w = conv.weight.detach().float() * scale.view(-1, 1, 1, 1)
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)


def purify(model, clean, params, gen, device):
    cfg = CLP.of(params)
    model.to(device)
    modules = dict(model.named_modules())
    pairs = trace(model, probe_input(model, int(cfg.trace_size))).conv_bn
    layers, total = {}, 0
    for conv_name, bn_name in pairs.items():
        if bn_name is None:
            layers[conv_name] = {"skipped": "no BatchNorm directly after this conv"}
            continue
        conv, bn = modules[conv_name], modules[bn_name]
        uclc = channel_lipschitz(conv, bn)
        threshold = (uclc.mean() + cfg.u * uclc.std()).item() if len(uclc) > 1 else float("inf")
        pruned = torch.nonzero(uclc > threshold).flatten().tolist()
        zero_channels(conv, bn, pruned)
        total += len(pruned)
        layers[conv_name] = {"bn": bn_name, "channels": len(uclc), "threshold": threshold,
                             "pruned": pruned, "uclc_pruned": uclc[pruned].tolist()}
    return model, {"u": cfg.u, "pruned_total": total, "layers": layers}
