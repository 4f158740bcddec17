"""Flamingo building blocks: the perceiver resampler and the gated cross-attention layer.

Shapes: B batch, T images per sample, P vision tokens per image, N latents, Dv vision width,
Dl language-model width, L text length.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FeedForward(nn.Sequential):
    """LayerNorm -> Linear -> GELU -> Linear (Flamingo's FF, no bias on the projections)."""

    def __init__(self, dim: int, mult: int = 2) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Latents attend to [vision tokens; latents] (Flamingo's perceiver attention)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: (M, P, D) vision tokens, latents: (M, N, D) -> (M, N, D)."""
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class PerceiverResampler(nn.Module):
    """Maps P vision tokens per image to N learned latents.

    Input (B, T, P, D) -> output (B, T, N, D). The output is the AAR hook point ``perceiver``.
    """

    def __init__(self, dim: int, depth: int, num_latents: int, heads: int, dim_head: int,
                 ff_mult: int = 2) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), FeedForward(dim, ff_mult)])
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        x = x.flatten(0, 1)  # (B*T, P, D)
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm(latents).unflatten(0, (b, t))


class GatedCrossAttentionBlock(nn.Module):
    """Text tokens attend to the latents of the most recent preceding image, tanh-gated.

    Flamingo starts the gates at 0 so that an untrained block leaves a *pretrained* language
    model unchanged. When the language model is trained from scratch together with the blocks
    (the embedded model's pretraining), zero gates deadlock: the block's weights get no gradient
    through tanh(0) = 0 and the gate's own gradient has no consistent sign, so the model learns a
    text-only prior and ignores the image. ``gate_init`` sets the starting gate value; when it
    is non-zero the output projections (attention and feed-forward) start at zero instead, so
    the block is still an exact identity at initialisation but its weights get a full gradient
    from the first step (the zero-init-last-layer pattern of ReZero / ControlNet).
    """

    def __init__(self, dim: int, media_dim: int, heads: int, dim_head: int, ff_mult: int = 2,
                 gate_init: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(media_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.attn_gate = nn.Parameter(torch.full((1,), float(gate_init)))
        self.ff = FeedForward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.full((1,), float(gate_init)))
        if gate_init != 0.0:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.ff[-1].weight)

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_index: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, L, Dl) hidden states of the text tokens.
            media: (B, T, N, Dv) adapter features.
            media_index: (B, L) long, 1-based index of the image each token follows (0 = none).
        Returns:
            (B, L, Dl).
        """
        b, t, n, _ = media.shape
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1)  # (B, T*N, inner)
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))
        image_of_latent = torch.arange(1, t + 1, device=x.device).repeat_interleave(n)  # (T*N,)
        allowed = media_index.unsqueeze(-1) == image_of_latent.view(1, 1, -1)  # (B, L, T*N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1))
        # Tokens before any image attend to nothing: SDPA gives NaN rows there; zero them.
        has_image = (media_index > 0).unsqueeze(-1)
        out = torch.where(has_image, out.transpose(1, 2).flatten(2).nan_to_num(0.0), 0.0)
        x = x + torch.tanh(self.attn_gate) * self.to_out(out)
        return x + torch.tanh(self.ff_gate) * self.ff(x)


class FlamingoAdapter(nn.Module):
    """The trainable adapter H_psi: perceiver resampler + one cross-attention block before every
    ``xattn_every``-th LM layer, the first before layer ``xattn_first`` (0: robustit's embedded
    model; ``xattn_every - 1``: OpenFlamingo's placement, after every N-th layer)."""

    def __init__(self, media_dim: int, lm_dim: int, n_lm_layers: int, *, perceiver_depth: int,
                 num_latents: int, heads: int, dim_head: int, xattn_heads: int, xattn_dim_head: int,
                 xattn_every: int, ff_mult: int, gate_init: float = 0.0, xattn_first: int = 0) -> None:
        super().__init__()
        self.perceiver = PerceiverResampler(media_dim, perceiver_depth, num_latents, heads, dim_head,
                                            ff_mult)
        self.xattn_layer_ids = list(range(xattn_first, n_lm_layers, xattn_every))
        self.xattn = nn.ModuleList(
            GatedCrossAttentionBlock(lm_dim, media_dim, xattn_heads, xattn_dim_head, ff_mult, gate_init)
            for _ in self.xattn_layer_ids)
