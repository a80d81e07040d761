r"""
# Attention on PyTorch's fused kernel

labml_nn's `MultiHeadAttention` spells attention out: an `einsum` for the scores
$Q K^\top / \sqrt{d_k}$, a masked fill, a softmax over keys, dropout, and another `einsum`
with the values. PyTorch's `scaled_dot_product_attention` computes the same
$$\text{softmax}\Big(\frac{Q K^\top}{\sqrt{d_k}} + M\Big) V$$
in one fused kernel (flash or memory-efficient attention where the hardware has them), and
with `is_causal=True` it never materialises the causal mask.

`SDPAttention` subclasses labml_nn's module and only replaces `forward`, so the parameters,
their names and shapes are the same: a checkpoint trained with one loads into the other.
Select it with `transformer.encoder_attn=sdpa`.

The GPT's causal mask is made here too (`causal_mask`), in labml_nn's layout, which both
attention modules read.
"""

from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F

from labml.configs import calculate
from labml_nn.transformers import TransformerConfigs
from labml_nn.transformers.mha import MultiHeadAttention


def causal_mask(n_queries: int, device: torch.device, n_past: int = 0) -> torch.Tensor:
    """
    The causal mask, `[n_queries, n_past + n_queries, 1]`: `mask[i, j]` is true when query `i`,
    at position `n_past + i`, may see key `j`, that is when `j <= n_past + i`. With `n_past=0`
    (training) it is labml_nn's `subsequent_mask`, made on the device; decoding with a cache of
    `n_past` keys ([sampling](sampling.html)) shifts the diagonal.
    """
    # Ones on and below the (shifted) diagonal; the last dimension broadcasts over the batch.
    ones = torch.ones(n_queries, n_past + n_queries, dtype=torch.bool, device=device)
    return ones.tril(diagonal=n_past).unsqueeze(-1)


class SDPAttention(MultiHeadAttention):
    def forward(self, *, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: Optional[torch.Tensor] = None):
        """
        Inputs are `[seq_len, batch_size, d_model]` (`[batch_size, seq_len, d_model]` inside
        a `with batch_first():` block) and `mask` is labml's
        `[seq_len_q, seq_len_k, batch_size or 1]`, true where a query may see a key.
        """
        if _batch_first:
            batch_size, seq_len, _ = query.shape
        else:
            seq_len, batch_size, _ = query.shape
        q, k, v = self._project(query, key, value)
        # `[.., .., heads, d_k]` -> `[batch_size, heads, seq_len, d_k]`: views, no copies
        order = (0, 2, 1, 3) if _batch_first else (1, 2, 0, 3)
        q, k, v = (t.permute(*order) for t in (q, k, v))

        attn_mask, is_causal = None, False
        if mask is not None:
            # The GPT's own mask is lower-triangular (`batch_first(causal_mask=...)` says so);
            # the fused kernel then needs no mask at all.
            if mask is _causal_mask:
                is_causal = True
            else:
                # `[seq_q, seq_k, batch]` -> `[batch, 1, seq_q, seq_k]`, broadcast over heads
                attn_mask = mask.permute(2, 0, 1).unsqueeze(1)

        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout.p if self.training else 0.0)
        # `[batch_size, heads, seq_len, d_k]` back to the input's layout. The CPU and CUDA
        # kernels return a `[batch_size, seq_len, heads, d_k]` tensor seen through a transpose,
        # so batch-first this is a view and sequence-first a copy.
        if _batch_first:
            x = x.transpose(1, 2).reshape(batch_size, seq_len, -1)
        else:
            x = x.permute(2, 0, 1, 3).reshape(seq_len, batch_size, -1)
        return self.output(x)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        r"""
        The query, key and value projections, split into heads: `[.., .., heads, d_k]`.
        In self-attention the three read the same input, so one matrix product with the three
        weights stacked, $x [W_q; W_k; W_v]^\top$, does the work of three smaller ones. The
        parameters stay three `nn.Linear`s, as in labml_nn.
        """
        layers = (self.query.linear, self.key.linear, self.value.linear)
        if query is key is value and all(layer.bias is not None for layer in layers):
            weight = torch.cat([layer.weight for layer in layers])
            bias = torch.cat([layer.bias for layer in layers])
            qkv = F.linear(query, weight, bias).view(*query.shape[:-1], 3, self.heads, self.d_k)
            return qkv.unbind(-3)
        return self.query(query), self.key(key), self.value(value)


# Whether `SDPAttention` takes batch-first inputs, and a mask its caller knows is causal;
# only `batch_first()` changes them.
_batch_first = False
_causal_mask = None


@contextmanager
def batch_first(causal_mask: Optional[torch.Tensor] = None):
    """
    Within this block, `SDPAttention` takes and returns `[batch_size, seq_len, d_model]`
    tensors: the layout the fused kernel's own tensors have (see [model](model.html)).
    Outside it, it is labml_nn's sequence-first layout, as for `MultiHeadAttention`.

    `causal_mask` is a mask the caller built lower-triangular, so attention need not look
    at its values to know it: a look that `torch.compile` cannot put in a graph.
    """
    global _batch_first, _causal_mask
    outer = _batch_first, _causal_mask
    _batch_first, _causal_mask = True, causal_mask
    try:
        yield
    finally:
        _batch_first, _causal_mask = outer


def _sdpa(c: TransformerConfigs):
    return SDPAttention(c.n_heads, c.d_model, dropout_prob=c.dropout)


calculate(TransformerConfigs.encoder_attn, 'sdpa', _sdpa)
calculate(TransformerConfigs.decoder_attn, 'sdpa', _sdpa)
