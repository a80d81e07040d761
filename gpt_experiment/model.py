r"""
# GPT

A GPT is a stack of transformer layers that each position can only see the past through:
a *causal* mask on self-attention. It is three parts, all built by labml_nn's
`TransformerConfigs` and passed in here:

* `src_embed`: token embeddings plus positional encodings,
* `encoder`: the transformer layers under the causal mask,
* `generator`: a linear layer from the last hidden state to logits over the vocabulary.

Options of the GPT-1 paper (see [gpt1](gpt1.html)) that live here:

* `embedding_dropout`: dropout on the sum of token and position embeddings (labml_nn's
  embedding modules have none);
* `tie_embeddings`: the generator's weight *is* the token embedding matrix $W_e$. labml_nn's
  embedding computes $\sqrt{d_{model}} W_e[x]$ (as Vaswani et al., who tie too), so with tying
  the logits are $h W_e^\top$ and the input is the same rows scaled by $\sqrt{d_{model}}$;
  GPT-1 itself has no such scale. The generator keeps its own bias;
* learned position tables are cut to `seq_len` rows ([`crop_positions`](#crop_positions)),
  and a post-LN encoder has no final LayerNorm.

Tensors are *sequence first*, `[seq_len, batch_size]`, as everywhere in labml_nn.
"""

import math

import torch
from torch import nn

from labml_nn.transformers import Encoder
from labml_nn.transformers.models import EmbeddingsWithLearnedPositionalEncoding, EmbeddingsWithPositionalEncoding

from .attention import SDPAttention, batch_first, causal_mask


class GPT(nn.Module):
    def __init__(self, encoder: Encoder, src_embed: nn.Module, generator: nn.Module, *,
                 embedding_dropout: float = 0.0, tie_embeddings: bool = False):
        super().__init__()
        self.src_embed = src_embed
        self.encoder = encoder
        self.generator = generator
        # A module without parameters: checkpoints are the same with or without it.
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        if tie_embeddings:
            # `[n_vocab, d_model]` in both: `nn.Embedding` rows and `nn.Linear` output rows.
            self.generator.projection.weight = self.src_embed.linear.weight
        # The causal mask `[seq_len, seq_len, 1]` is built on first use and cached;
        # it is not a parameter nor a buffer, so it stays out of checkpoints.
        self.mask = None
        # With fused attention in every layer, the encoder runs *batch first* (see below).
        self.batch_first = all(isinstance(layer.self_attn, SDPAttention) for layer in encoder.layers)

    def forward(self, x: torch.Tensor):
        # `mask[i, j]` is true when position `i` may attend to position `j <= i`.
        if torch.compiler.is_compiling():
            # Inside a `torch.compile` graph the mask is built, not read from `self.mask`:
            # sampling resets that to other lengths, and each reset would recompile the graph.
            mask = causal_mask(len(x), x.device)
        else:
            if self.mask is None or self.mask.size(0) != len(x) or self.mask.device != x.device:
                self.mask = causal_mask(len(x), x.device)
            mask = self.mask
        if self.batch_first:
            # The fused attention kernel works on `[batch, heads, seq, d_k]` views of
            # `[batch, seq, heads, d_k]` tensors. Sequence first, every layer would copy its
            # queries, keys, values, their gradients and its output between the two layouts;
            # batch first, only the encoder's output is transposed. Layer norms, feed-forward
            # networks and residual sums do not care which dimension comes first.
            with batch_first(causal_mask=mask):
                x = self.encoder(self.embedding_dropout(self._embed_batch_first(x)), mask).transpose(0, 1)
        else:
            x = self.encoder(self.embedding_dropout(self.src_embed(x)), mask)
        # The second value is the recurrent state labml's trainer expects; a GPT has none.
        return self.generator(x), None

    def _embed_batch_first(self, x: torch.Tensor) -> torch.Tensor:
        r"""
        `[batch_size, seq_len, d_model]` embeddings of `[seq_len, batch_size]` tokens. labml_nn's
        embeddings compute $\sqrt{d_{model}} W_e[x] + p$; here the tokens are transposed rather
        than the result, and the scale and the sum are one operation.
        """
        e = self.src_embed
        if type(e) in (EmbeddingsWithLearnedPositionalEncoding, EmbeddingsWithPositionalEncoding):
            pe = e.positional_encodings[:x.shape[0]].transpose(0, 1)
            return torch.add(pe, e.linear(x.t()), alpha=math.sqrt(e.d_model))
        return e(x).transpose(0, 1).contiguous()


def crop_positions(src_embed: nn.Module, seq_len: int) -> nn.Module:
    """
    <a id="crop_positions"></a>
    Cut a learned positional table (labml_nn makes 5,000 rows) to the `seq_len` rows a GPT can
    use. Fixed sinusoidal tables are buffers, not parameters, and are left as they are.
    """
    pe = getattr(src_embed, 'positional_encodings', None)
    if isinstance(pe, nn.Parameter) and pe.shape[0] > seq_len:
        src_embed.positional_encodings = nn.Parameter(pe.detach()[:seq_len].clone())
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
