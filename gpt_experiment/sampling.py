r"""
# Sampling

While it trains, labml shows what the model writes: at every switch between training and
validation it continues the configured prompt greedily for a few tokens. `generate` continues
a prompt from a checkpoint with temperature, top-k and top-p. Both go through here.

* The context fed to the model is cropped to the last `seq_len` tokens, so a long generation
  never runs past what the model was trained on (or past a learned positional table).
* A prompt that the vocabulary cannot encode is refused before training starts, instead of
  failing in the middle of a run.

## Key/value cache

Without a cache, each new token runs the model over the whole context again: $O(n)$
positions of compute per token. But a causal transformer's keys and values at a position
never change once computed (no position sees the future), so we keep them, layer by layer, and
each new token costs one position: its query attends to the cached keys and values plus its
own. That is `KVCache`. It needs no change to the model: while it decodes, each layer's
`self_attn` is swapped for a `CachedAttention` that uses the *same* query, key, value and output
projections (those of labml_nn's `MultiHeadAttention`, which our `sdpa` attention subclasses,
so both work) and keeps the keys and values. The layer itself (pre-LN or post-LN), the
embeddings, the final norm and the generator run unchanged.

### Sliding window

A GPT with absolute positions (learned or sinusoidal) has seen positions $0..\text{seq\_len}-1$
only. When the cache is full, the next token has no position to go to; and sliding the window
by one shifts *every* cached token to a new position, which changes all their keys and
values: the cache cannot simply drop its oldest entry. So when it is full we drop the oldest
`slide` tokens and recompute the cache for the rest in one forward pass (at positions
$0, 1, \dots$), then go on one token at a time. Between two slides the model sees between
`seq_len - slide` and `seq_len` tokens of context (the uncached path always sees the last
`seq_len`); `slide=1` gives exactly the uncached context, at the uncached cost. The default,
`seq_len // 4`, recomputes $\frac34$ of a window every `seq_len // 4` tokens.
"""

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from labml_nn.sampling import Sampler
from labml_nn.sampling.greedy import GreedySampler
from labml_nn.sampling.nucleus import NucleusSampler
from labml_nn.sampling.temperature import TemperatureSampler
from labml_nn.sampling.top_k import TopKSampler
from labml_nn.transformers.mha import MultiHeadAttention

from . import tokenizers
from .errors import UserError
from .model import causal_mask


def check_prompt(prompt: str, tokenizer):
    """Refuse an empty prompt, or one with characters that the vocabulary lacks, naming them."""
    if not prompt:
        raise UserError('prompt is empty: sampling needs at least one token to start from')
    tokenizers.check_encodable(tokenizer, prompt, f'prompt {prompt!r}')


def greedy_continuation(model: nn.Module, tokenizer, prompt: str, *, n_tokens: int, seq_len: int,
                        separator: str, device: torch.device) -> Iterator[str]:
    """
    The text of the `n_tokens` tokens the model appends to `prompt`, taking the most likely one
    each time, yielded token by token (so that the caller can stop between two). Each token
    runs the model over the last `seq_len` tokens ([`generate`](#generate) without its cache,
    which works with any attention).
    """
    decoder = tokenizers.StreamDecoder(tokenizer)
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.long, device=device)
    for token in generate(model, ids[-seq_len:], n_tokens=n_tokens, seq_len=seq_len, sampler=GreedySampler(),
                          use_cache=False):
        yield separator + decoder.add(token)
    tail = decoder.flush()
    if tail:
        yield separator + tail


def make_sampler(temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None) -> Sampler:
    r"""
    labml_nn's samplers, composed: top-p keeps the smallest set of most likely tokens whose
    probabilities reach $p$, top-k at most the $k$ most likely of those, and the sample is drawn
    from what is left (renormalised). The temperature divides the logits first, so top-p
    sees the tempered distribution. Temperature 0 is greedy.
    """
    if temperature < 0:
        raise UserError(f'temperature must be >= 0, got {temperature}')
    if top_k is not None and top_k < 1:
        raise UserError(f'top-k must be at least 1, got {top_k}')
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f'top-p must be in (0, 1], got {top_p}')
    if temperature == 0:
        return GreedySampler()
    sampler = TemperatureSampler(1.0)
    if top_k is not None:
        sampler = _TopK(top_k, sampler)
    if top_p is not None and top_p < 1:
        sampler = NucleusSampler(top_p, sampler)
    return _Tempered(temperature, sampler)


class _Tempered(Sampler):
    """Divide the logits by the temperature, then sample with `sampler`."""

    def __init__(self, temperature: float, sampler: Sampler):
        self.temperature = temperature
        self.sampler = sampler

    def __call__(self, logits: torch.Tensor):
        return self.sampler(logits / self.temperature)


class _TopK(TopKSampler):
    """labml_nn's top-k, with `k` capped at the vocabulary size."""

    def __call__(self, logits: torch.Tensor):
        k, self.k = self.k, min(self.k, logits.shape[-1])
        try:
            return super().__call__(logits)
        finally:
            self.k = k


class CachedAttention(nn.Module):
    """
    Self-attention of one layer with its keys and values kept across calls. It borrows the
    projections of `attn` (a labml_nn `MultiHeadAttention` or our `SDPAttention`).
    """

    def __init__(self, attn: MultiHeadAttention):
        super().__init__()
        self.attn = attn
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    def forward(self, *, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask=None):
        # `[n_new, batch_size, d_model]`; the mask is ours (causal), not the caller's.
        n_new, batch_size, _ = query.shape
        a = self.attn
        # `[n, batch, heads, d_k]` -> `[batch, heads, n, d_k]`
        q, k, v = (t.permute(1, 2, 0, 3) for t in (a.query(query), a.key(key), a.value(value)))
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        # New query $i$ sits at position `n_past + i` and sees keys `0..n_past + i`.
        n_past = k.shape[2] - n_new
        visible = causal_mask(n_new, q.device, n_past=n_past)[..., 0]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return a.output(x.permute(2, 0, 1, 3).reshape(n_new, batch_size, -1))


class KVCache:
    """
    Incremental decoding of a `GPT`: `forward(ids)` takes only the new tokens and returns their
    logits; the keys and values of everything before are kept.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        layers = model.encoder.layers
        for layer in layers:
            if not isinstance(layer.self_attn, MultiHeadAttention) or type(layer.self_attn).get_scores \
                    is not MultiHeadAttention.get_scores:
                raise UserError(f'the key/value cache needs mha or sdpa attention, '
                                f'not {type(layer.self_attn).__name__}')
        self.attentions = [CachedAttention(layer.self_attn) for layer in layers]
        self.length = 0

    def reset(self):
        for a in self.attentions:
            a.k = a.v = None
        self.length = 0

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """`ids` `[n_new, batch_size]` -> logits `[n_new, batch_size, n_tokens]`."""
        model = self.model
        # the new tokens sit after the `length` kept
        x = model.embedding_dropout(model.embed(ids, start=self.length))
        for layer, cached in zip(model.encoder.layers, self.attentions):
            original = layer.self_attn
            layer.self_attn = cached
            try:
                x = layer(x=x, mask=None)
            finally:
                layer.self_attn = original
        self.length += len(ids)
        return model.generator(model.encoder.norm(x))


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, *, n_tokens: int, seq_len: int, sampler: Sampler,
             use_cache: bool = True, slide: Optional[int] = None) -> Iterator[int]:
    """
    Yield `n_tokens` token ids continuing `prompt` (1-D ids, already cropped to `seq_len`),
    one at a time. With `use_cache` the model runs incrementally ([`KVCache`](#KVCache)),
    sliding its window by `slide` tokens (default `seq_len // 4`) when full; without, each
    token runs the model over the last `seq_len` tokens.
    """
    # in eval mode (no dropout) while it decodes, and back to the mode it was in after
    was_training = model.training
    model.eval()
    slide = max(1, seq_len // 4) if slide is None else slide
    ids = prompt.tolist()
    device = prompt.device
    try:
        cache = KVCache(model) if use_cache else None
        if cache is not None:
            logits = cache.forward(prompt[-seq_len:].unsqueeze(-1))
        for i in range(n_tokens):
            if cache is None:
                context = torch.tensor(ids[-seq_len:], device=device)
                logits, *_ = model(context.unsqueeze(-1))
            token = int(sampler(logits[-1:, 0])[0])
            ids.append(token)
            yield token
            if cache is not None and i + 1 < n_tokens:
                if cache.length >= seq_len:
                    # Full: keep the last `seq_len - slide` tokens at new positions, and the new one.
                    cache.reset()
                    logits = cache.forward(torch.tensor(ids[-(seq_len - slide + 1):], device=device).unsqueeze(-1))
                else:
                    logits = cache.forward(torch.tensor([token], device=device).unsqueeze(-1))
    finally:
        model.train(was_training)
