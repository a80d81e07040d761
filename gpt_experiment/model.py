r"""
# GPT

A GPT is a stack of transformer layers in which each position sees only the past: a *causal*
mask on self-attention. It is three parts, all built by labml_nn's `TransformerConfigs` and
passed in here:

* `src_embed`: token embeddings plus positional encodings,
* `encoder`: the transformer layers under the causal mask,
* `generator`: a linear layer from the last hidden state to logits over the vocabulary.

This file also holds what the labml recipe does not have:

* [`SDPAttention`](#SDPAttention), labml_nn's attention on PyTorch's fused kernel
  (`transformer.encoder_attn=sdpa`, the default);
* [`PostLNTransformerLayer`](#PostLNTransformerLayer), GPT-1's post-LayerNorm layer
  (`transformer.encoder_layer=post_ln`);
* [GELU's tanh approximation](#GELU_tanh), GPT-1's and GPT-2's own activation
  (`transformer.ffn.activation=GELU_tanh`).

Tensors are *sequence first*, `[seq_len, batch_size]`, as everywhere in labml_nn.
"""

import copy
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labml.configs import calculate, option
from labml_nn.transformers import Encoder, TransformerConfigs
from labml_nn.transformers.configs import FeedForwardConfigs
from labml_nn.transformers.mha import MultiHeadAttention
from labml_nn.transformers.models import (EmbeddingsWithLearnedPositionalEncoding, EmbeddingsWithPositionalEncoding,
                                          TransformerLayer)


def causal_mask(n_queries: int, device: torch.device, n_past: int = 0) -> torch.Tensor:
    r"""
    The causal mask, `[n_queries, n_past + n_queries, 1]`: `mask[i, j]` is true when query `i`,
    at position `n_past + i`, may see key `j`, that is when `j <= n_past + i`. With `n_past=0`
    (training) it is labml_nn's `subsequent_mask`, made on the device; decoding with a cache of
    `n_past` keys ([sampling](sampling.html)) shifts the diagonal.
    """
    # Ones on and below the (shifted) diagonal; the last dimension broadcasts over the batch.
    ones = torch.ones(n_queries, n_past + n_queries, dtype=torch.bool, device=device)
    return ones.tril(diagonal=n_past).unsqueeze(-1)


class GPT(nn.Module):
    r"""
    Options of the GPT-1 paper that live here:

    * `embedding_dropout`: dropout on the sum of token and position embeddings (labml_nn's
      embedding modules have none);
    * `tie_embeddings`: the generator's weight *is* the token embedding matrix $W_e$.
      labml_nn's embedding computes $\sqrt{d_{model}} W_e[x]$ (as Vaswani et al., who tie
      too), so with tying the logits are $h W_e^\top$ and the input is the same rows scaled
      by $\sqrt{d_{model}}$. The generator keeps its own bias (unless `generator_bias=false`).
    """

    def __init__(self, encoder: Encoder, src_embed: nn.Module, generator: nn.Module, *,
                 embedding_dropout: float = 0.0, tie_embeddings: bool = False):
        super().__init__()
        self.src_embed = src_embed
        self.encoder = encoder
        self.generator = generator
        # A module without parameters: checkpoints are the same with or without it.
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        # Every dropout of the model, labml_nn's included, becomes the one below, which draws
        # its mask faster on a CPU
        for module in list(self.modules()):
            for name, child in module.named_children():
                if type(child) is nn.Dropout:
                    setattr(module, name, Dropout(child.p))
        if tie_embeddings:
            # `[n_vocab, d_model]` in both: `nn.Embedding` rows and `nn.Linear` output rows.
            self.generator.projection.weight = self.src_embed.linear.weight
        # With fused attention in every layer, the encoder runs *batch first*: the fused
        # kernel works on `[batch, heads, seq, d_k]` views of `[batch, seq, heads, d_k]`
        # tensors. Sequence first, every layer would copy its queries, keys, values, their
        # gradients and its output between the two layouts; batch first, only the encoder's
        # output is transposed. Layer norms, feed-forward networks and residual sums do not
        # care which dimension comes first. The attention layers then know the mask is causal
        # without being given one.
        self.batch_first = all(type(layer.self_attn) is SDPAttention for layer in encoder.layers)
        for layer in encoder.layers:
            if self.batch_first:
                layer.self_attn.batch_first = layer.self_attn.is_causal = True

    def forward(self, x: torch.Tensor):
        if self.batch_first:
            # `[seq, batch]` tokens to `[batch, seq, d_model]` embeddings, the encoder batch
            # first (no mask: every layer is causal), and the output back to sequence first.
            x = self.encoder(self.embedding_dropout(self.embed(x, batch_first=True)), None).transpose(0, 1)
        else:
            # labml_nn's attention reads the mask: `mask[i, j]` is true when position `i` may
            # attend to position `j <= i` (made anew each time: a few microseconds).
            x = self.encoder(self.embedding_dropout(self.src_embed(x)), causal_mask(len(x), x.device))
        # The second value is the recurrent state labml's trainer expects; a GPT has none.
        return self.generator(x), None

    def embed(self, x: torch.Tensor, start: int = 0, batch_first: bool = False) -> torch.Tensor:
        r"""
        The embeddings of `[seq_len, batch_size]` tokens at positions `start, start + 1, ...`:
        `[seq_len, batch_size, d_model]`, or `[batch_size, seq_len, d_model]` with `batch_first`.
        labml_nn's embeddings compute $\sqrt{d_{model}} W_e[x] + p$; here the scale and the sum
        are one operation, and batch first the tokens are transposed rather than the result.
        Training embeds from position 0; the [key/value cache](sampling.html) embeds each new
        token at the position after those it keeps.
        """
        e = self.src_embed
        tokens = x.t() if batch_first else x
        if type(e) is nn.Embedding:
            # labml_nn's `no_pos`: the token embeddings alone, unscaled, whatever the position
            return e(tokens)
        if type(e) not in (EmbeddingsWithLearnedPositionalEncoding, EmbeddingsWithPositionalEncoding):
            # Another embedding module runs as it is, from position 0
            if start:
                raise ValueError(f'{type(e).__name__} embeds from position 0 only')
            return e(x).transpose(0, 1).contiguous() if batch_first else e(x)
        # `[seq_len, 1, d_model]`, broadcast over the batch
        pe = e.positional_encodings[start:start + len(x)]
        if len(pe) < len(x):
            raise ValueError(f'positions up to {start + len(x)} but the table has {len(e.positional_encodings)}')
        return torch.add(pe.transpose(0, 1) if batch_first else pe, e.linear(tokens), alpha=math.sqrt(e.d_model))


class Dropout(nn.Dropout):
    r"""
    <a id="Dropout"></a>
    ## Dropout with a faster mask on a CPU

    Dropout keeps each element with probability $1 - p$ and scales the kept ones by
    $1 / (1 - p)$. On a CPU PyTorch draws the mask with `bernoulli_`, a double from its
    Mersenne twister per element, one element at a time; at the default shape, whose
    feed-forward drops out its 2,048-wide hidden layer too, drawing masks cost an fp32
    training step more than anything but the matrix products. Here the mask costs about one
    random *byte* per element ([`keep_mask`](#keep_mask)), with the same keep probability. The
    function is dropout's; only the random numbers differ. On other devices, and under
    `torch.compile` (which draws its own), PyTorch's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and 0 < self.p < 1 and x.device.type == 'cpu') or torch.compiler.is_compiling():
            return super().forward(x)
        keep = keep_mask(x.shape, self.p)
        if x.dtype == torch.float32:
            # $x \odot \frac{m}{1 - p}$: the scaled mask made once, one product forward and one back
            return x * keep.to(x.dtype).mul_(1 / (1 - self.p))
        # In bf16 or fp16 the scale would round, so it multiplies in float arithmetic, as PyTorch's does
        return x * keep * (1 / (1 - self.p))


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    r"""
    <a id="keep_mask"></a>
    A boolean mask of `shape`, each element true with probability $1 - p$ (to $2^{-32}$),
    drawn on the CPU from PyTorch's random generator. Exact dropout would compare a 32-bit
    uniform $u$ per element with the threshold $t = \lfloor p \, 2^{32} \rceil$: keep when
    $u \ge t$. Compare them a byte at a time instead, most significant first. Write
    $t = t_0 \, 2^{24} + r$ and $u = b \, 2^{24} + u'$, with $b$ the top byte: $u \ge t$ exactly when
    $b > t_0$, or when $b = t_0$ and $u' \ge r$. So one random byte settles an element, except
    one in 256 (the ties), which draw their remaining 24 bits.
    """
    n = math.prod(shape)
    t0, r = divmod(round(p * 2 ** 32), 2 ** 24)
    # The bytes come from numpy's default bit generator (PCG64), eight a draw, seeded from
    # PyTorch's generator: `torch.manual_seed` fixes the masks, and a checkpoint's saved
    # random state resumes them.
    bits = np.random.PCG64(int(torch.randint(2 ** 62, ())))
    b = bits.random_raw((n + 7) // 8).view(np.uint8)[:n]
    keep = b > t0
    tie = np.flatnonzero(b == t0)
    # The ties' remaining 24 bits: the top 24 of a fresh 64-bit draw each
    keep[tie] = (bits.random_raw(tie.size) >> np.uint64(40)) >= r
    return torch.from_numpy(keep).view(shape)


def crop_positions(src_embed: nn.Module, seq_len: int) -> nn.Module:
    """
    <a id="crop_positions"></a>
    Cut a positional table (labml_nn makes 5,000 rows) to the `seq_len` rows a GPT can use. A
    learned table stays a parameter; a fixed sinusoidal one is recomputed whenever the model is
    built, so it becomes a buffer that checkpoints leave out.
    """
    pe = getattr(src_embed, 'positional_encodings', None)
    if isinstance(pe, nn.Parameter) and pe.shape[0] > seq_len:
        src_embed.positional_encodings = nn.Parameter(pe.detach()[:seq_len].clone())
    elif isinstance(pe, torch.Tensor) and not isinstance(pe, nn.Parameter):
        src_embed.register_buffer('positional_encodings', pe[:seq_len].clone(), persistent=False)
    return src_embed


def init_weights(module: nn.Module):
    r"""
    GPT-2/minGPT initialisation: every `nn.Linear` and `nn.Embedding` weight from
    $\mathcal{N}(0, 0.02)$ and linear biases at zero, instead of PyTorch's default
    Kaiming-uniform. Use it with `model.apply(init_weights)`.

    LayerNorm keeps its default (gain 1, bias 0), and so do positional encodings that are
    plain parameters rather than `nn.Embedding`s.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class SDPAttention(MultiHeadAttention):
    r"""
    <a id="SDPAttention"></a>
    ## Attention on PyTorch's fused kernel

    labml_nn's `MultiHeadAttention` spells attention out: an `einsum` for the scores
    $Q K^\top / \sqrt{d_k}$, a masked fill, a softmax over keys, dropout, and another `einsum`
    with the values. PyTorch's `scaled_dot_product_attention` computes the same
    $$\text{softmax}\Big(\frac{Q K^\top}{\sqrt{d_k}} + M\Big) V$$
    in one fused kernel (flash or memory-efficient attention where the hardware has them), and
    with `is_causal=True` it never materialises the causal mask.

    It subclasses labml_nn's module and only replaces `forward`, so the parameters, their names
    and shapes are the same: a checkpoint trained with one loads into the other.
    """

    # `[batch, seq, d_model]` inputs instead of labml_nn's `[seq, batch, d_model]`; set by the GPT
    batch_first = False
    # Causal self-attention, with no mask given (a GPT's); set by the GPT
    is_causal = False

    def forward(self, *, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: Optional[torch.Tensor] = None):
        """`mask` is labml's `[seq_len_q, seq_len_k, batch_size or 1]`, true where a query may see a key."""
        if self.batch_first:
            batch_size, seq_len, _ = query.shape
        else:
            seq_len, batch_size, _ = query.shape
        q, k, v = self._project(query, key, value)
        # `[.., .., heads, d_k]` -> `[batch_size, heads, seq_len, d_k]`: views, no copies
        order = (0, 2, 1, 3) if self.batch_first else (1, 2, 0, 3)
        q, k, v = (t.permute(*order) for t in (q, k, v))
        # `[seq_q, seq_k, batch]` -> `[batch, 1, seq_q, seq_k]`, broadcast over heads
        attn_mask = mask.permute(2, 0, 1).unsqueeze(1) if mask is not None else None
        if self.training and self.dropout.p > 0 and q.device.type == 'cpu':
            x = self._attend_with_dropout(q, k, v, attn_mask)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               is_causal=self.is_causal and mask is None,
                                               dropout_p=self.dropout.p if self.training else 0.0)
        # `[batch_size, heads, seq_len, d_k]` back to the input's layout. The CPU and CUDA
        # kernels return a `[batch_size, seq_len, heads, d_k]` tensor seen through a transpose,
        # so batch-first this is a view and sequence-first a copy.
        if self.batch_first:
            x = x.transpose(1, 2).reshape(batch_size, seq_len, -1)
        else:
            x = x.permute(2, 0, 1, 3).reshape(seq_len, batch_size, -1)
        return self.output(x)

    def _attend_with_dropout(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        r"""
        PyTorch's CPU kernel has no dropout: with it, `scaled_dot_product_attention` falls back
        to these same steps, labml_nn's, with PyTorch's slower dropout mask. Spelled out, they
        use the model's [`Dropout`](#Dropout):
        $\text{Dropout}\big(\text{softmax}(Q K^\top / \sqrt{d_k} + M)\big) V$.
        """
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if attn_mask is None:
            # causal: query `i` sees keys `j <= i`
            attn_mask = causal_mask(q.shape[-2], q.device)[..., 0]
        scores = scores.masked_fill(~attn_mask, float('-inf'))
        return self.dropout(scores.softmax(dim=-1)) @ v

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


def _sdpa(c: TransformerConfigs):
    return SDPAttention(c.n_heads, c.d_model, dropout_prob=c.dropout)


calculate(TransformerConfigs.encoder_attn, 'sdpa', _sdpa)
calculate(TransformerConfigs.decoder_attn, 'sdpa', _sdpa)


class PostLNTransformerLayer(TransformerLayer):
    r"""
    <a id="PostLNTransformerLayer"></a>
    ## GPT-1's post-LayerNorm layer

    [Radford et al. (2018)](
    https://cdn.openai.com/research-covers/language-unsupervised/language_understanding_paper.pdf)
    normalise *after* each residual sum, as the original transformer does, where labml_nn
    normalises before each sub-layer. The parameters are those of labml_nn's (pre-LN)
    `TransformerLayer`. A post-LN stack ends normalised already, so the GPT drops labml_nn's
    final LayerNorm for it ([configs](configs.html)). It is an encoder layer only.
    """

    def forward(self, *, x: torch.Tensor, mask: torch.Tensor, src: torch.Tensor = None,
                src_mask: torch.Tensor = None):
        assert src is None, 'the post-LN layer is a GPT (encoder) layer'
        # $x \leftarrow \text{LN}(x + \text{Dropout}(\text{attn}(x)))$
        x = self.norm_self_attn(x + self.dropout(self.self_attn(query=x, key=x, value=x, mask=mask)))
        # $x \leftarrow \text{LN}(x + \text{Dropout}(\text{ffn}(x)))$
        return self.norm_ff(x + self.dropout(self.feed_forward(x)))


@option(TransformerConfigs.encoder_layer, 'post_ln')
def _post_ln_encoder_layer(c: TransformerConfigs):
    return PostLNTransformerLayer(d_model=c.d_model, self_attn=c.encoder_attn, src_attn=None,
                                  feed_forward=copy.deepcopy(c.ffn.ffn), dropout_prob=c.dropout)


@option(FeedForwardConfigs.activation, 'GELU_tanh')
def _gelu_tanh():
    r"""
    <a id="GELU_tanh"></a>
    ## GELU's tanh approximation

    $$\text{GELU}(x) \approx \frac{x}{2}\Big(1 + \tanh\big(\sqrt{2/\pi}\,(x + 0.044715 x^3)\big)\Big)$$

    GPT-1 and GPT-2 were trained with this approximation (`gelu_new` in Hugging Face
    `transformers`, and OpenAI GPT's `gelu`), where labml_nn's `GELU` is the exact
    $x \Phi(x)$. The two differ by up to about $5 \cdot 10^{-4}$, enough to move the logits of a
    model trained with the other, so a GPT-2 imported with `init_from=hf:` keeps its own
    ([hf](hf.html)).
    """
    return nn.GELU(approximate='tanh')
