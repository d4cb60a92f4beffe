"""Quantized inputs of self-attention's matrix products (timm's ``Attention``, the ViT/DeiT block).

A ViT's linear layers (qkv, proj, the MLP, the head) are quantized by module replacement
(:mod:`qgen.quant.replace`); the two matrix products inside attention have no weights, only activations:
``(q·scale) @ kᵀ`` and ``softmax(·) @ v``. With ``quant.attention: true`` their four inputs pass through
activation quantizers of the middle layers' bit width: q (after the 1/√d scaling), k and v on signed grids,
the attention probabilities (in [0, 1]) on an unsigned grid. This is the common practice of ViT QAT
(e.g. Q-ViT, Li et al. 2022); where exactly QGen quantizes its transformers is not verifiable (papers.md §1),
so it is off by default. The attention is computed explicitly (no fused kernel), otherwise as timm computes
it; with identity quantizers it equals timm's output (tested).
"""

from __future__ import annotations

import dataclasses

import torch
from timm.models.vision_transformer import Attention
from torch import nn

from qgen.quant.registry import LayerQuant


class QuantAttention(Attention):
    """timm ``Attention`` whose matrix-product inputs are quantized (``q_quant``, ``k_quant``,
    ``attn_quant``, ``v_quant``)."""

    quant_attrs: tuple[str, ...] = ("q_quant", "k_quant", "attn_quant", "v_quant")

    def _setup_quant(self, quant: LayerQuant | None) -> None:
        for attr in self.quant_attrs:
            if quant is None or quant.act_bits is None:
                setattr(self, attr, nn.Identity())
            else:
                signed = attr != "attn_quant"
                lq = dataclasses.replace(quant, input_signed=signed)
                setattr(self, attr, lq.input_quantizer().to(self.qkv.weight.device))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("quantized attention supports unmasked self-attention (ViT) only")
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.q_quant(q * self.scale) @ self.k_quant(k).transpose(-2, -1)
        attn = self.attn_drop(self.attn_quant(attn.softmax(dim=-1)))
        x = (attn @ self.v_quant(v)).transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def quantize_attention(model: nn.Module, quant: LayerQuant | None) -> list[str]:
    """Turn every timm ``Attention`` of ``model`` into a :class:`QuantAttention` (in place: the module
    keeps its parameters and names); returns their names."""
    names = []
    for name, module in model.named_modules():
        if type(module) is Attention:
            module.__class__ = QuantAttention
            module._setup_quant(quant)  # type: ignore[operator]
            names.append(name)
    return names
