"""The target network: a view-independent NeRF MLP whose weights come from w through FMM hyper layers.

Topology (the authors' target network): PE(xyz) (63) -> layer 0 (63 -> C) -> layers 1..L-1 (C -> C) -> output (C -> 4).
Hidden layers are relu x sqrt(2); the output is linear. When the layer at list position skip_after + 1 exists
(num_layers >= 6 for the default skip_after = 4), the hidden state after layer skip_after is replaced by [PE, h], so
that layer takes 63 + C inputs (with num_layers = 5 the reference would crash; here that depth simply has no skip).
The sqrt(2) gain of each relu is folded into the next layer's generated weight (exact).
Weights are built once per call (`build_weights`) and then applied to any number of point chunks (`evaluate`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_utils import backend
from torch_utils.persistence import persistent_class
from training.networks import hyper
from training.networks.hyper import HyperLinear
from training.rendering.volume import encoding_dim, positional_encoding

RELU_GAIN = math.sqrt(2.0)
LayerWeights = list[tuple[torch.Tensor, torch.Tensor]]


@persistent_class
class NeRFMLP(nn.Module):
    """Per-object NeRF MLP: points [B, N, 3] -> raw [B, N, 4] (rgb logits, density logit)."""

    def __init__(self,
                 num_layers: int = 4,   # Hidden (point) layers L; the output layer comes on top.
                 width: int = 128,      # Hidden width C.
                 w_dim: int = 128,      # Size of w.
                 rank: int = 10,        # FMM rank.
                 multires: int = 10,    # Positional-encoding frequencies.
                 skip_after: int = 4,   # Concatenate [PE, h] after this layer index (if a later layer exists).
                 ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"NeRFMLP needs at least one hidden layer, got num_layers={num_layers}")
        self.num_layers, self.width, self.multires, self.skip_after = num_layers, width, multires, skip_after
        pe_dim = encoding_dim(multires)
        self.uses_skip = num_layers > skip_after + 1
        layers = [HyperLinear(pe_dim, width, w_dim, rank)]
        for i in range(1, num_layers):
            skip_in = self.uses_skip and i == skip_after + 1
            layers.append(HyperLinear(pe_dim + width if skip_in else width, width, w_dim, rank,
                                      input_gain=RELU_GAIN, input_gain_start=pe_dim if skip_in else 0))
        layers.append(HyperLinear(width, 4, w_dim, rank, input_gain=RELU_GAIN))
        self.layers = nn.ModuleList(layers)

    def build_weights(self, w: torch.Tensor) -> LayerWeights:
        """w [B, w_dim] -> per layer (weight^T [B, c_in, c_out], bias [c_out]), in fp32 (or float64); the layers'
        affine maps run as one GEMM (`hyper.affine_styles`)."""
        styles = hyper.affine_styles(list(self.layers), w)
        return [layer.build(w, s) for layer, s in zip(self.layers, styles)]

    def evaluate(self, weights: LayerWeights, pts: torch.Tensor) -> torch.Tensor:
        """Apply the built weights to points [B, N, 3] -> raw [B, N, 4] (dtype of the last GEMM).

        The layers run as the backend's `g_layers` says (the same function): 'plain' one baddbmm per layer; 'tuned'
        the encoding padded to a multiple of 8 columns and the output layer to 8 outputs with zero weights (aligned
        GEMMs) and `hyper._PerObjectLinear`'s backward; 'fused' those padded layers as one `object_linear` kernel
        each (`hyper.fused_layers`)."""
        pe = positional_encoding(pts, self.multires)                    # [B, N, 63]
        pe_dim = pe.shape[-1]
        layers_impl = backend.current().g_layers
        pad = -pe_dim % 8 if layers_impl != "plain" else 0
        if pad:
            pe = F.pad(pe, [0, pad])                                    # [B, N, 64]
        last = len(self.layers) - 1
        prepared = []
        for i, (weight_t, bias) in enumerate(weights):
            if pad and i == 0:
                weight_t = F.pad(weight_t, [0, 0, 0, pad])              # zero rows for the padded columns
            elif pad and self.uses_skip and i == self.skip_after + 1:
                weight_t = torch.cat([F.pad(weight_t[:, :pe_dim], [0, 0, 0, pad]), weight_t[:, pe_dim:]], dim=1)
            out_pad = -weight_t.shape[2] % 8 if layers_impl != "plain" and i == last else 0
            if out_pad:
                weight_t, bias = F.pad(weight_t, [0, out_pad]), F.pad(bias, [0, out_pad])
            prepared.append((weight_t, bias))
        if layers_impl == "fused":
            dtype = torch.get_autocast_dtype(pe.device.type) if torch.is_autocast_enabled(pe.device.type) else pe.dtype
            layers = [(w.to(dtype), b.to(dtype)) for w, b in prepared]
            h = hyper.fused_layers(pe.to(dtype), layers, self.skip_after + 1 if self.uses_skip else -1)
        else:
            h = pe
            for i, (layer, (weight_t, bias)) in enumerate(zip(self.layers, prepared)):
                h = layer.apply_weights(h, weight_t, bias, tuned=layers_impl == "tuned")   # [B, N, c_out (+ pad)]
                if i < last:
                    h = torch.relu(h)                                   # gain sqrt(2) lives in the next weight
                    if self.uses_skip and i == self.skip_after:
                        h = torch.cat([pe.to(h.dtype), h], dim=-1)      # [B, N, 63 (+ pad) + C]
        c_out = weights[last][0].shape[2]
        return h[..., :c_out] if h.shape[-1] != c_out else h            # drop the output padding

    def forward(self, w: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        """w [B, w_dim], pts [B, N, 3] -> raw [B, N, 4]."""
        return self.evaluate(self.build_weights(w), pts)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, width={self.width}, skip={self.uses_skip}"
