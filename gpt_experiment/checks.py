"""
# Checks before anything is written

Every value a user can give is checked here, after labml has applied the overrides and before
the run's folder exists: a bad value is one `UserError` line, never a traceback half way
through building the model, and never a run folder left behind. (The override parser has
already refused values of the wrong type, numbers that are not finite, and integers past 64
bits: [overrides](overrides.html).)

The checks read the configs without building the model: its size is estimated from the
shapes, so that a model too large for the machine is refused with the memory it would need,
instead of the machine running out of memory.
"""

import os

import torch

from . import labml_glue, sampling
from .errors import UserError

# Keys whose values are counts or sizes, and the least each can be.
AT_LEAST = {
    'seq_len': 1, 'batch_size': 1, 'epochs': 1, 'inner_iterations': 1, 'log_interval': 1,
    'transformer.d_model': 1, 'transformer.n_heads': 1, 'transformer.n_layers': 1, 'transformer.ffn.d_ff': 1,
    'bpe_train_bytes': 1, 'save_models_interval': 1, 'log_new_line_interval': 1, 'log_write_interval': 1,
    'optimizer.total_steps': 1, 'optimizer.warmup': 0,
    'sample_tokens': 0, 'warmup_steps': 0, 'seed': 0, 'device.cuda_device': 0,
    # 0: the whole validation split
    'valid_batches': 0,
    # the 256 bytes of a byte-level BPE, and one merge
    'bpe_vocab_size': 257,
}
AT_MOST = {
    # seeds go to `torch.Generator.manual_seed`, and the validation order takes `seed + 1`
    'seed': (2 ** 63 - 2, 'the largest seed the generators take, less one'),
    # token ids are stored as uint32
    'bpe_vocab_size': (2 ** 32, 'token ids are stored as 32-bit integers'),
    # labml_nn's positional tables have this many rows
    'seq_len': (5000, "labml_nn's positional tables have 5,000 rows"),
}
# Rates and sizes of the optimizer that must be above 0, or at least 0
POSITIVE = ('learning_rate', 'optimizer.learning_rate', 'optimizer.eps', 'grad_norm_clip')
NON_NEGATIVE = ('weight_decay', 'optimizer.weight_decay', 'optimizer.momentum')
# Probabilities of dropping, in [0, 1)
DROPOUTS = ('transformer.dropout', 'transformer.ffn.dropout', 'embedding_dropout')
# labml_nn's fixed positional table: a buffer of `5000 x d_model` floats
FIXED_POSITIONS = 5000


def check_value(key: str, value):
    """
    The range of one value that a user gives (the defaults are all in range). The parser has
    made it the key's type already.
    """
    if key in AT_LEAST and value < AT_LEAST[key]:
        least = AT_LEAST[key]
        raise UserError(f'{key} must be {"positive" if least == 1 else f"at least {least}"}, got {value}')
    if key in AT_MOST and value > AT_MOST[key][0]:
        most, why = AT_MOST[key]
        raise UserError(f'{key} must be at most {most:,} ({why}), got {value:,}')
    if key in POSITIVE and not value > 0:
        raise UserError(f'{key} must be positive, got {value}')
    if key in NON_NEGATIVE and value < 0:
        raise UserError(f'{key} must be at least 0, got {value}')
    if key in DROPOUTS and not 0 <= value < 1:
        raise UserError(f'{key} must be in [0, 1), got {value}')
    # Adam's moments are running averages: each beta must be in [0, 1).
    if key == 'optimizer.betas' and not all(0 <= b < 1 for b in value):
        raise UserError(f'optimizer.betas must each be in [0, 1), got {list(value)}')


def check_configs(c):
    """What depends on several values, on the configs labml computed from the overrides."""
    if c.transformer.d_model % c.transformer.n_heads:
        raise UserError(f'transformer.d_model={c.transformer.d_model} is not divisible by '
                        f'transformer.n_heads={c.transformer.n_heads}')
    # Loading the corpus checks it ([corpus](corpus.html)); then the prompt must be in its vocabulary.
    sampling.check_prompt(c.prompt, c.text)
    _check_memory(c)
    # labml's trainer cuts an epoch into `inner_iterations` stretches, each followed by validation.
    batches = len(c.train_loader)
    if c.inner_iterations > batches:
        raise UserError(f'inner_iterations={c.inner_iterations} is more than the training batches of an epoch '
                        f'({batches}); give at most inner_iterations={batches}')


def _src_embed(c) -> str:
    # The option's name: the embedding it builds could itself be too large to build
    return labml_glue.chosen_value(c.transformer, 'src_embed')


def parameter_count(c) -> int:
    """The parameters of the GPT these configs build, counted from the shapes (nothing is built)."""
    t = c.transformer
    d, f, vocab = t.d_model, t.ffn.d_ff, c.n_tokens
    # Attention: query, key, value and output projections, each `d x d` with a bias
    attention = 4 * (d * d + d)
    # Feed-forward: `d -> d_ff -> d`, and a second `d -> d_ff` when gated; each bias optional
    gated = t.ffn.is_gated
    ffn = (2 + gated) * d * f + f * t.ffn.bias1 + d * t.ffn.bias2 + f * (gated and t.ffn.bias_gate)
    # Two layer norms, each a gain and a bias
    layer = attention + ffn + 4 * d
    # Token embeddings, the generator (only its bias when tied), and the final layer norm,
    # which a post-LN stack does without
    final_norm = 0 if labml_glue.chosen_value(t, 'encoder_layer') == 'post_ln' else 2 * d
    ends = vocab * d + (vocab if c.tie_embeddings else vocab * d + vocab) + final_norm
    # A learned position table, cut to `seq_len` rows
    positions = c.seq_len * d if _src_embed(c) == 'learned_pos' else 0
    return t.n_layers * layer + ends + positions


def _check_memory(c):
    """Refuse a model whose weights, gradients and Adam moments could not fit on the device."""
    n = parameter_count(c)
    # Four float32 copies of every parameter, and labml_nn's fixed positional table
    needed = 16 * n + (4 * FIXED_POSITIONS * c.transformer.d_model if _src_embed(c) == 'fixed_pos' else 0)
    if c.device.type == 'cuda':
        available = torch.cuda.get_device_properties(c.device).total_memory
    else:
        available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    if needed > available:
        raise UserError(f'the model has {n:,} parameters and would need {needed / 2 ** 30:,.1f} GiB for its weights, '
                        f'gradients and Adam moments alone; the {c.device.type} has {available / 2 ** 30:,.1f} GiB')
