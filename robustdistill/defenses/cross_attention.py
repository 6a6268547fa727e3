"""Cross-attention maps of a diffusers UNet, captured WITH their gradient (for SKD-CAG's attention guidance).

diffusers' default attention processors compute softmax(Q K^T / sqrt(d)) inside a fused kernel and never expose it.
:func:`record_cross_attention` swaps the processor of every cross-attention layer (``attn2``: image queries, text
keys) for :class:`RecordingProcessor`, which computes the same attention explicitly, through the layer's own
``get_attention_scores``, and hands the probabilities to an :class:`AttentionRecorder` as they are: part of the
graph, so a loss on them trains ``to_q`` and ``to_k`` (the pattern of Forget-Me-Not, Zhang et al. 2023).
``detach=True`` stores them cut from the graph instead - what SKD-CAG's official code does (it converts the maps to
NumPy), which leaves its attention loss without any gradient; kept only to show that defect.

:func:`token_maps` turns one forward pass's records into one map per text token: heads averaged, every layer resized
to the largest layer's resolution, layers summed, each token's map min-max normalised to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class AttentionRecorder:
    """The attention probabilities of the layers run since :meth:`clear`, (batch, heads, queries, tokens) each."""

    detach: bool = False
    maps: list[torch.Tensor] = field(default_factory=list)

    def add(self, probabilities: torch.Tensor) -> None:
        self.maps.append(probabilities.detach() if self.detach else probabilities)

    def clear(self) -> None:
        self.maps = []


class RecordingProcessor:
    """diffusers' plain attention, computed explicitly so that the softmax can be recorded."""

    def __init__(self, recorder: AttentionRecorder) -> None:
        self.recorder = recorder

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.dim() == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size = context.shape[0]
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probabilities = attn.get_attention_scores(query, key, attention_mask)  # (batch * heads, queries, tokens)
        self.recorder.add(probabilities.view(batch_size, attn.heads, *probabilities.shape[1:]))
        out = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if spatial:
            out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_names(unet: Any) -> list[str]:
    """The processor names of the UNet's cross-attention layers."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def record_cross_attention(unet: Any, recorder: AttentionRecorder) -> dict[str, Any]:
    """Record every cross-attention layer of ``unet`` into ``recorder`` (self-attention keeps its processor);
    returns the previous processors, for :func:`restore_processors`."""
    previous = dict(unet.attn_processors)
    names = cross_attention_names(unet)
    if not names:
        raise ValueError("the UNet has no cross-attention (attn2) layers")
    unet.set_attn_processor({name: RecordingProcessor(recorder) if name in names else processor
                             for name, processor in previous.items()})
    return previous


def restore_processors(unet: Any, previous: dict[str, Any]) -> None:
    unet.set_attn_processor(dict(previous))  # a copy: diffusers empties the dict it is given


def token_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """(batch, tokens, side, side): per token, the heads' mean map of every layer, resized to the largest layer's
    side (bilinear), summed over layers, then min-max normalised over the pixels."""
    if not maps:
        raise ValueError("no attention maps were recorded")
    side = max(math.isqrt(m.shape[2]) for m in maps)
    total = None
    for layer in maps:
        batch, _, queries, tokens = layer.shape
        s = math.isqrt(queries)
        if s * s != queries:
            raise ValueError(f"{queries} queries are not a square image")
        grid = layer.mean(dim=1).transpose(1, 2).reshape(batch, tokens, s, s)
        if s != side:
            grid = torch.nn.functional.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
        total = grid if total is None else total + grid
    flat = total.flatten(2)
    low, high = flat.amin(dim=2, keepdim=True), flat.amax(dim=2, keepdim=True)
    return ((flat - low) / (high - low + 1e-8)).view_as(total)
