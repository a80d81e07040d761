"""
# Checks before anything is written

Every value a user can give is checked here, after labml has applied the overrides and before
the run's folder exists: a bad value is one `UserError` line, never a traceback half way
through building the model, and never a run folder left behind.
"""

from . import sampling
from .errors import UserError


def check_configs(c):
    """
    Refuse impossible configurations of a `Configs`. Sizes must be positive, heads must divide
    the width, and the prompt must be in the vocabulary (which loads the data, and with it
    checks the corpus).
    """
    sizes = {'seq_len': c.seq_len, 'batch_size': c.batch_size, 'epochs': c.epochs,
             'inner_iterations': c.inner_iterations, 'transformer.d_model': c.transformer.d_model,
             'transformer.n_heads': c.transformer.n_heads, 'transformer.n_layers': c.transformer.n_layers,
             'transformer.ffn.d_ff': c.transformer.ffn.d_ff}
    for key, value in sizes.items():
        if value <= 0:
            raise UserError(f'{key} must be positive, got {value}')
    if c.transformer.d_model % c.transformer.n_heads:
        raise UserError(f'transformer.d_model={c.transformer.d_model} is not divisible by '
                        f'transformer.n_heads={c.transformer.n_heads}')
    if not 0 <= c.transformer.dropout < 1:
        raise UserError(f'transformer.dropout must be in [0, 1), got {c.transformer.dropout}')
    if not 0 <= c.embedding_dropout < 1:
        raise UserError(f'embedding_dropout must be in [0, 1), got {c.embedding_dropout}')
    if c.valid_batches < 0:
        raise UserError(f'valid_batches must be 0 (the whole split) or more, got {c.valid_batches}')
    if c.bpe_vocab_size < 257:
        raise UserError(f'bpe_vocab_size must be at least 257 (the 256 bytes and one merge), got {c.bpe_vocab_size}')
    sampling.check_prompt(c.prompt, c.text)
