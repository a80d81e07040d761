"""
# Checks before anything is written

What depends on several values is checked here, on the configs labml computed from the
overrides, before the run's folder exists: a bad combination is one `UserError` line, never a
traceback half way through building the model, and never a run folder left behind. (Each
value on its own, its type and its range, is checked when it is parsed: [overrides](overrides.html).)

The checks read the configs without building the model: its size is estimated from the
shapes, so that a model too large for the machine is refused with the memory it would need,
instead of the machine running out of memory.
"""

import os

import torch

from . import labml_glue, sampling
from .errors import UserError

# labml_nn's fixed positional table: a buffer of `5000 x d_model` floats
FIXED_POSITIONS = 5000


def check_configs(c):
    """What depends on several values, on the configs labml computed from the overrides."""
    if c.transformer.d_model % c.transformer.n_heads:
        raise UserError(f'transformer.d_model={c.transformer.d_model} is not divisible by '
                        f'transformer.n_heads={c.transformer.n_heads}')
    # Loading the corpus checks it ([corpus](corpus.html)); then the prompt must be in its vocabulary.
    sampling.check_prompt(c.prompt, c.text.tokenizer)
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
    # Token embeddings, the generator (its weight unless tied, its bias unless `generator_bias=false`),
    # and the final layer norm, which a post-LN stack does without
    final_norm = 0 if labml_glue.chosen_value(t, 'encoder_layer') == 'post_ln' else 2 * d
    ends = vocab * d + (0 if c.tie_embeddings else vocab * d) + (vocab if c.generator_bias else 0) + final_norm
    # A learned position table, cut to `seq_len` rows
    positions = c.seq_len * d if _src_embed(c) == 'learned_pos' else 0
    return t.n_layers * layer + ends + positions


def activation_bytes(c, windows: int) -> int:
    """
    What the forward pass of `windows` windows keeps for the backward pass, estimated from the
    shapes: per token and layer, about ten `d_model`-wide tensors (the layer norms' inputs and
    outputs, the query, key and value, the attention's output and the residuals) and three
    `d_ff`-wide ones (the feed-forward's hidden layer before and after its activation, and its
    dropout's), and labml_nn's attention (`mha`) its `heads x seq_len` scores twice; per token,
    the logits three times (the logits, their log-softmax and its gradient). In 4-byte floats:
    autocast keeps some in 2 bytes, so this errs on the safe side.
    """
    t = c.transformer
    tokens = windows * c.seq_len
    per_layer = 10 * t.d_model + 3 * t.ffn.d_ff
    if labml_glue.chosen_value(t, 'encoder_attn') != 'sdpa':
        per_layer += 2 * t.n_heads * c.seq_len
    return 4 * tokens * (t.n_layers * per_layer + 3 * c.n_tokens)


def memory_limit(device) -> int:
    """
    The memory training may use: the GPU's, or the machine's RAM, less when a cgroup (a
    container's limit, `docker --memory`, a SLURM job) allows this process less.
    """
    if device.type == 'cuda':
        return torch.cuda.get_device_properties(device).total_memory
    limit = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    for path in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
        try:
            value = open(path).read().strip()
        except OSError:
            continue
        if value.isdigit():
            limit = min(limit, int(value))
    return limit


def _check_memory(c):
    """
    Refuse a model whose weights, gradients and Adam moments, with what a forward pass keeps
    for the backward pass, could not fit in the memory training may use; name a
    `micro_batch_size` that fits, when one does.
    """
    n = parameter_count(c)
    # Four float32 copies of every parameter, and labml_nn's fixed positional table
    fixed = 16 * n + (4 * FIXED_POSITIONS * c.transformer.d_model if _src_embed(c) == 'fixed_pos' else 0)
    available = memory_limit(c.device)
    if fixed > available:
        raise UserError(f'the model has {n:,} parameters and would need {fixed / 2 ** 30:,.1f} GiB for its weights, '
                        f'gradients and Adam moments alone; the {c.device.type} has {available / 2 ** 30:,.1f} GiB')
    # a forward pass takes a micro-batch, a batch, or at most an epoch's windows
    micro = min(c.micro_batch_size or c.batch_size, c.batch_size, c.train_loader.windows_per_epoch)
    needed = fixed + activation_bytes(c, micro)
    if needed > available:
        # what a forward pass keeps grows with its windows
        fits = (available - fixed) // activation_bytes(c, 1)
        hint = f'; micro_batch_size={fits} would fit' if fits else '; not even one window fits'
        raise UserError(f'a forward pass of {micro} windows of {c.seq_len} tokens would need about '
                        f'{needed / 2 ** 30:,.1f} GiB with the model; the {c.device.type} allows '
                        f'{available / 2 ** 30:,.1f} GiB{hint}')
