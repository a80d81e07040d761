"""
# Sampling

While it trains, labml shows what the model writes: at every switch between training and
validation it continues the configured prompt greedily for a few tokens. Two things make that
robust here:

* the context fed to the model is cropped to the last `seq_len` tokens, so a long generation
  never runs past what the model was trained on (or past a learned positional table);
* a prompt that the vocabulary cannot encode is refused before training starts, instead of
  failing in the middle of a run.
"""

from typing import List

import torch
from torch import nn

from labml_helpers.datasets.text import TextDataset

from .errors import UserError


def check_prompt(prompt: str, text: TextDataset):
    """Refuse a prompt with tokens that the vocabulary lacks, naming them."""
    missing = sorted({t for t in text.tokenizer(prompt) if t not in text.stoi})
    if missing:
        raise UserError(f'prompt {prompt!r} has tokens that are not in the vocabulary: '
                        + ' '.join(repr(t) for t in missing))
    if not prompt:
        raise UserError('prompt is empty: sampling needs at least one token to start from')


@torch.no_grad()
def greedy_continuation(model: nn.Module, text: TextDataset, prompt: str, *,
                        n_tokens: int, seq_len: int, separator: str, device: torch.device) -> List[str]:
    """The `n_tokens` tokens the model appends to `prompt`, taking the most likely one each time."""
    was_training = model.training
    model.eval()
    ids = text.text_to_i(prompt).to(device)
    out = []
    for _ in range(n_tokens):
        # `[seq_len, 1]`: the last `seq_len` tokens as a batch of one.
        logits, *_ = model(ids[-seq_len:].unsqueeze(-1))
        next_id = logits[-1, 0].argmax()
        ids = torch.cat([ids, next_id.view(1)])
        out.append(separator + text.itos[next_id.item()])
    model.train(was_training)
    return out
