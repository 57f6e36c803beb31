"""SAM's mask decoder with its attention products regrouped for many prompts on one image.

SAM's ``MaskDecoder`` repeats the image embedding once per prompt, then projects all of its
``h * w`` image tokens (4096 for a 64 x 64 embedding) in every cross attention. A box prompt has
only 7 tokens (the IoU token, 4 mask tokens and 2 box corners), so the same products cost less the
other way round: the few prompt tokens are carried into the image's channel space and the image
tokens are never projected.

* tokens -> image: ``softmax(q Wk (x + pe)^T) (x Wv^T + bv)`` is computed as
  ``softmax((q Wk) (x + pe)^T) x``, then times ``Wv^T`` plus ``bv`` (the key bias adds a constant per
  row, which the softmax removes; a row of attention weights sums to 1, so the value bias passes through);
* image -> tokens: the query projection of the image is folded into the keys (``Wq^T k^T``), and
  the output projection into the values (``v Wo^T``).

On the first layer the image side is the same for every prompt, so those products are shared.
Per prompt this is about half of SAM's multiply-adds for a 64 x 64 embedding (0.9 G against 1.7 G);
the upscaling (0.4 G) is most of what is left. Its 2 x 2, stride-2 transposed convolutions write each pixel's
own block, so they run here as matrix products on channels-last pixels, with no col2im and no transpose of a
(N, C, H, W) tensor. The weights are SAM's own modules, frozen and unchanged; the outputs equal
``MaskDecoder(multimask_output=False)`` to float rounding (``Testing/Python/test_prompt_batch_decoder.py``).
Dense (mask) prompts are not supported: the engine never gives them, and without them the image side is shared.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(N, T, D) -> (N, heads, T, D / heads)."""
    n, t, d = x.shape
    return x.reshape(n, t, heads, d // heads).transpose(1, 2)


def _tokens_to_image(attention: nn.Module, queries: Tensor, query_pe: Tensor, keys: Tensor,
                     positioned: Tensor) -> Tensor:
    """SAM's token-to-image attention; ``keys`` (P, C) shared by every prompt or (N, P, C) per prompt, and
    ``positioned`` the keys plus their positional encoding."""
    heads = attention.num_heads
    n, t, _ = queries.shape
    q = _split_heads(attention.q_proj(queries + query_pe), heads)  # (N, h, T, d)
    d = attention.internal_dim // heads  # a Python int, so an exported graph keeps it a constant
    c = keys.shape[-1]
    qk = q @ attention.k_proj.weight.reshape(heads, d, c)  # (N, h, T, C): queries carried into channel space
    if keys.dim() == 2:  # one image for every prompt: a single large product
        scores = qk.reshape(n * heads * t, c) @ positioned.T
    else:
        scores = qk.reshape(n, heads * t, c) @ positioned.transpose(1, 2)
    weights = torch.softmax(scores / math.sqrt(d), dim=-1)
    mixed = (weights @ keys).reshape(n, heads, t, c)
    value_w = attention.v_proj.weight.reshape(heads, d, c).transpose(1, 2)  # (h, C, d)
    values = mixed @ value_w + attention.v_proj.bias.reshape(heads, 1, d)  # (N, h, T, d)
    return attention.out_proj(values.transpose(1, 2).reshape(n, t, heads * d))


def _image_to_tokens(attention: nn.Module, positioned: Tensor, tokens: Tensor, token_pe: Tensor) -> Tensor:
    """SAM's image-to-token attention; ``positioned`` is the image plus its positional encoding, (P, C) shared
    or (N, P, C) per prompt; returns (N, P, C)."""
    heads = attention.num_heads
    n, t, _ = tokens.shape
    k = _split_heads(attention.k_proj(tokens + token_pe), heads)  # (N, h, T, d)
    v = _split_heads(attention.v_proj(tokens), heads)
    d = attention.internal_dim // heads
    c = positioned.shape[-1]
    query_w = attention.q_proj.weight.reshape(heads, d, c)
    folded = (query_w.transpose(1, 2) @ k.transpose(2, 3))  # (N, h, C, T): the image's query projection, folded in
    bias = attention.q_proj.bias.reshape(heads, 1, d) @ k.transpose(2, 3)  # (N, h, 1, T)
    if positioned.dim() == 2:
        scores = positioned @ folded.permute(2, 0, 1, 3).reshape(c, n * heads * t)  # (P, N h T)
        scores = scores.reshape(-1, n, heads, t).permute(1, 0, 2, 3)  # (N, P, h, T)
    else:
        scores = (positioned @ folded.permute(0, 2, 1, 3).reshape(n, c, heads * t)).reshape(n, -1, heads, t)
    scores = scores + bias.permute(0, 2, 1, 3)  # (N, 1, h, T)
    weights = torch.softmax(scores / math.sqrt(d), dim=-1).reshape(n, -1, heads * t)
    out_w = attention.out_proj.weight.reshape(c, heads, d).permute(1, 2, 0)  # (h, d, C)
    values = (v @ out_w).reshape(n, heads * t, c)  # (N, h T, C): the output projection, folded into the values
    # Each head's weights sum to 1, so a bias spread over the heads' values adds it once, on the few tokens.
    return weights @ (values + attention.out_proj.bias / heads)


def _pixel_linear(conv: nn.ConvTranspose2d) -> tuple[Tensor, Tensor]:
    """A 2 x 2, stride 2 transposed convolution as one matrix on channels-last pixels: (C_in, 4 C_out) and its bias.

    Each input pixel writes its own 2 x 2 block of output pixels, so the convolution is a per-pixel linear map
    whose output columns are ordered (row in the block, column in the block, channel)."""
    c_in, c_out = conv.weight.shape[:2]
    return conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out), conv.bias.repeat(4)


def _upscaled_masks(upscaling: nn.Sequential, keys: Tensor, h: int, w: int, hyper: Tensor) -> Tensor:
    """SAM's ``output_upscaling`` and hypernetwork product on channels-last image tokens.

    ``keys`` (N, h w, C) -> (N, 1, 4h, 4w) logits. The same arithmetic as the module (transposed convolution,
    channel LayerNorm, GELU, transposed convolution, GELU, then the product with ``hyper`` (N, C / 8)),
    computed per pixel as matrix products. The pixels are put in image order only at the end, on the
    single-channel logits, so no (N, C, H, W) tensor is ever transposed and no col2im runs.
    """
    first, norm, act1, second, act2 = upscaling
    if not (isinstance(first, nn.ConvTranspose2d) and isinstance(second, nn.ConvTranspose2d)
            and first.kernel_size == first.stride == second.kernel_size == second.stride == (2, 2)):
        raise ValueError("expected SAM's output_upscaling: 2x2 stride-2 transposed convolutions")
    n = keys.shape[0]
    w1, b1 = _pixel_linear(first)
    c1 = first.out_channels
    x = (keys @ w1 + b1).reshape(n, h * w * 4, c1)  # (N, pixels x 2 x 2, C/4)
    x = act1(torch.nn.functional.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
    w2, b2 = _pixel_linear(second)
    c2 = second.out_channels
    x = act2(x @ w2 + b2).reshape(n, h * w * 16, c2)  # (N, pixels x 2 x 2 x 2 x 2, C/8)
    logits = (x @ hyper[:, :, None]).reshape(n, h, w, 2, 2, 2, 2)  # (N, h, w, row1, col1, row2, col2)
    return logits.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, 1, 4 * h, 4 * w)


class PromptBatchDecoder(nn.Module):
    """Prompt embeddings on one image embedding -> SAM's single-mask logits and predicted IoU."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def forward(self, image_embedding: Tensor, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """(1, C, h, w) embedding and (N, T, C) sparse prompt embeddings -> (N, 1, 4h, 4w) logits, (N, 1) IoU."""
        decoder = self.mask_decoder
        transformer = decoder.transformer
        n = sparse.shape[0]
        _, c, h, w = image_embedding.shape
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(n, -1, -1), sparse], dim=1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1)
        keys = (image_embedding + no_mask).flatten(2)[0].T  # (P, C), shared until the first layer updates it
        key_pe = self.prompt_encoder.get_dense_pe().flatten(2)[0].T
        queries = tokens
        for layer in transformer.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            positioned = keys + key_pe  # both cross attentions of a layer read the same positioned image
            queries = layer.norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image, queries, tokens,
                                                             keys, positioned))
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(keys + _image_to_tokens(layer.cross_attn_image_to_token, positioned, queries, tokens))
        queries = transformer.norm_final_attn(queries + _tokens_to_image(
            transformer.final_attn_token_to_image, queries, tokens, keys, keys + key_pe))
        hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1, :])  # the first mask token: single-mask output
        masks = _upscaled_masks(decoder.output_upscaling, keys, h, w, hyper)
        iou = decoder.iou_prediction_head(queries[:, 0, :])[:, :1]
        return masks, iou
