"""
# Configurations

`Configs` is the whole experiment as labml configurations: the [trainer](trainer.html) (itself
labml_nn's `NLPAutoRegressionConfigs`, with its loop), and the GPT's keys and `@option`s:

* `transformer`: labml_nn's `TransformerConfigs`, sized from the vocabulary, with GELU and
  attention on PyTorch's fused kernel;
* `model`: the [GPT](model.html) with N(0, 0.02) initialisation;
* `optimizer`: Adam with the minGPT weight-decay groups ([optimizer](optimizer.html));
* `text`: a [corpus](corpus.html), read, checked, split and tokenised; `train_loader` and
  `valid_loader`: its batches;
* `dtype=auto`: bf16 where the hardware has bf16 units.

Every value can be overridden with labml's `experiment.configs(conf, overrides)`; the
defaults are the labml GPT recipe on Tiny Shakespeare.
"""

import warnings
from pathlib import Path
from typing import Optional

import torch

from labml import logger
from labml.configs import option
from labml.logger import Text
from labml_helpers.device import DeviceConfigs
from labml_nn.transformers import TransformerConfigs

from . import corpus, distributed, labml_glue, tokenizers
from .errors import UserError
from .model import GPT, PostLNTransformerLayer, crop_positions, init_weights
from .optimizer import GPTOptimizerConfigs, DecayRule, decay_groups, gpt_optimizer_configs, linear_weights, \
    matrix_weights
from .trainer import Trainer

# We replace labml_nn's `tiny_shakespeare` option (a download into `data/`) with the copy in
# the package, and its optimizer option of the same name; labml warns about each replacement.
warnings.filterwarnings('ignore', message='Overriding option for (text: tiny_shakespeare|optimizer)')


class Configs(Trainer):
    """
    ## GPT experiment configurations
    """
    # GPT model
    model: GPT
    # The width of the model, `transformer.d_model`: labml_nn's top-level key, computed here so
    # that the run's `configs.yaml` records the width the model has
    d_model: int = 'transformer_width'
    # Transformer: embeddings, layers and generator
    transformer: TransformerConfigs
    # Weight decay of the parameters that decay
    weight_decay: float = 0.1
    # Maximum learning rate
    learning_rate: float = 6e-4
    # GPT's optimizer
    optimizer = 'transformer_optimizer'
    # Which parameters decay: `linear` (minGPT: `nn.Linear` weights) or `matrices` (GPT-1: every
    # weight but biases and gains); the option is the rule itself ([optimizer](optimizer.html))
    weight_decay_params: DecayRule = 'linear'

    # GPT-1 options (see [model](model.html)), off by default

    # The generator's weight is the token embedding matrix
    tie_embeddings: bool = False
    # The generator adds a learned bias per token to the logits (labml_nn's does; GPT-1's and
    # GPT-2's heads have none, and a run without one exports to them at any vocabulary size)
    generator_bias: bool = True
    # Dropout on the token and position embeddings
    embedding_dropout: float = 0.0
    # Vocabulary size of `tokenizer=bpe`
    bpe_vocab_size: int = tokenizers.DEFAULT_BPE_VOCAB_SIZE
    # Bytes of the training split that train the BPE tokenizer (at most)
    bpe_train_bytes: int = 100_000_000

    # Training device, `device.use_cuda` and `device.cuda_device`. labml_nn's default is one
    # `DeviceConfigs` object shared by every instance, which a second run in the same process
    # could not override again; this option makes a fresh one per `Configs`.
    device = 'device_configs'
    # `RUN[:STEP]`: a new run that starts from the weights of that run's checkpoint (the newest
    # complete one when no step is given), with its tokenizer and shape; everything else starts
    # fresh ([training](training.html)). `hf:DIR`: the same from a local Hugging Face GPT-2 or
    # OpenAI GPT folder ([hf](hf.html))
    init_from: str = ''

    # The labml GPT recipe

    # `character`: one token per character; `bpe`: a byte-level BPE trained on the corpus
    tokenizer = 'character'
    # The corpus: `tiny_shakespeare` (in the package), or `text=<file or folder>`
    text = 'tiny_shakespeare'
    # Text that the greedy sample at every train/valid switch continues
    prompt: str = 'It is '
    # Shown between sampled tokens
    prompt_separator: str = ''
    # Tokens of context
    seq_len: int = 128
    # Windows of `seq_len` tokens per optimizer step
    batch_size: int = 128

    # A text file or a folder of `.txt` files, with `text=file`
    text_file: str = ''
    # Optional separate validation file; otherwise the last 10% of `text` validates
    valid_text_file: str = ''

    train_loader = 'shuffled_windows'
    valid_loader = 'shuffled_windows'

    # The tokenizer of the run this one continues (resumed, or `init_from`), which the corpus
    # is encoded with as it is, never rebuilt; set by [training](training.html)
    _run_tokenizer = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # labml_nn's options that cannot work here are not offered: `basic_english` needs
        # torchtext (whose import is broken with this torch), and labml_nn's loaders read the
        # text of `TextDataset`, which our corpus is not.
        for key, name in (('tokenizer', 'basic_english'), ('train_loader', 'sequential_train_loader'),
                          ('train_loader', 'shuffled_train_loader'), ('valid_loader', 'sequential_valid_loader'),
                          ('valid_loader', 'shuffled_valid_loader')):
            labml_glue.withdraw_option(self, key, name)


# Every key that changes what the model computes: its shape, the meaning of its weights and of
# its token ids. A run that continues another (`--resume`, or `init_from`) cannot change them;
# with learned positions, `seq_len` is among them too (the table has `seq_len` rows).
MODEL_KEYS = ('transformer.d_model', 'transformer.n_heads', 'transformer.n_layers',
              'transformer.ffn.d_ff', 'transformer.ffn.activation', 'transformer.ffn.is_gated',
              'transformer.ffn.bias1', 'transformer.ffn.bias2', 'transformer.ffn.bias_gate',
              'transformer.ffn.glu_variant', 'transformer.encoder_layer', 'transformer.src_embed',
              'tie_embeddings', 'generator_bias', 'tokenizer', 'bpe_vocab_size', 'bpe_train_bytes')


def model_keys(src_embed: str) -> tuple:
    """`MODEL_KEYS`, and `seq_len` when the positions are a learned table of `seq_len` rows."""
    return MODEL_KEYS + (('seq_len',) if src_embed == 'learned_pos' else ())


@option(Configs.device, 'device_configs')
def _device_configs() -> DeviceConfigs:
    conf = DeviceConfigs()
    # Under torchrun, each process trains on the GPU of its local rank.
    conf.cuda_device = distributed.world().local_rank
    return conf


# ## Precision
#
# bf16 autocast pays only where the hardware multiplies bf16 matrices natively, at about twice
# the fp32 rate: CUDA GPUs with bf16 tensor cores (Ampere and later), and CPUs with AVX512-BF16
# or AMX. Elsewhere bf16 is emulated and slower than fp32. On a CPU it pays only for wide
# enough models: autocast casts weights and activations around every matrix product, which
# costs more than the faster products save below `CPU_BF16_FROM_WIDTH`, where bf16 measured
# faster (benchmarks/bf16_crossover.py; docs/results.md). `dtype=auto`, the default, asks the
# hardware at run time; the run's `configs.yaml` records `auto` and its log says which it took
# and why.

# The narrowest model (`transformer.d_model`) at which a training step measured faster in bf16
# than in fp32 on CPUs with bf16 units
CPU_BF16_FROM_WIDTH = 256

@option(Configs.dtype, 'float32')
def _float32():
    return torch.float32


@option(Configs.dtype, 'bfloat16')
def _bfloat16():
    return torch.bfloat16


@option(Configs.dtype, 'float16')
def _float16():
    return torch.float16


def has_bf16_units(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware."""
    if device.type == 'cuda':
        # compute capability 8.0 (Ampere) and up; earlier GPUs emulate it
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == 'cpu':
        return bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})
    return False


def _cpuinfo(key: str) -> Optional[str]:
    """The value of the first `key: value` line of Linux's `/proc/cpuinfo` (`None` elsewhere)."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return None
    return next((line.split(':', 1)[1].strip() for line in text.splitlines() if line.split(':')[0].strip() == key),
                None)


def cpu_flags() -> set:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    return set((_cpuinfo('flags') or '').split())


def cpu_name() -> str:
    """The CPU's model and which of the flags that decide where bf16 pays it has: what a benchmark names."""
    flags = sorted(cpu_flags() & {'avx512f', 'avx512_bf16', 'amx_bf16'})
    return f'{_cpuinfo("model name") or "unknown CPU"} ({", ".join(flags) or "no avx512f, avx512_bf16 or amx_bf16"})'


def auto_dtype(device: torch.device, width: int) -> tuple:
    """`(dtype, why)`: bf16 where it pays, fp32 elsewhere."""
    if not has_bf16_units(device):
        return torch.float32, f'the {device.type} has no bf16 units'
    if device.type == 'cpu' and width < CPU_BF16_FROM_WIDTH:
        return torch.float32, f'on a CPU bf16 pays from {CPU_BF16_FROM_WIDTH} wide; the model is {width}'
    return torch.bfloat16, f'the {device.type} has bf16 units' + (
        f' and the model is {width} wide' if device.type == 'cpu' else '')


@option(Configs.dtype, 'auto')
def _auto_dtype(c: Configs):
    """bf16 where it pays, fp32 elsewhere."""
    dtype, why = auto_dtype(c.device, c.transformer.d_model)
    logger.log([('dtype=auto: ', Text.key), (str(dtype).replace('torch.', ''), Text.value), (f' ({why})', Text.meta)])
    return dtype


@option(Configs.state_modules)
def _no_state_modules():
    """No state modules: the trainer counts accuracy on the device."""
    return []


@option(Configs.d_model, 'transformer_width')
def _transformer_width(c: Configs) -> int:
    return c.transformer.d_model


# What the `GPT` option sets in labml_nn's `TransformerConfigs`, over that class's defaults:
# GPT's GELU, and labml_nn's attention on PyTorch's fused kernel (the same computation and
# parameters, faster: benchmarks/throughput.py; `transformer.encoder_attn=mha` is the stock module).
GPT_TRANSFORMER = {'ffn.activation': 'GELU', 'encoder_attn': 'sdpa'}


@option(Configs.transformer, 'GPT')
def _transformer_configs(c: Configs) -> TransformerConfigs:
    """
    ### Transformer configurations

    labml_nn's configurable transformer, with the vocabulary sizes of our text and the GELU
    activation that GPT uses in its feed-forward layers.
    """
    conf = TransformerConfigs()
    conf.n_src_vocab = c.n_tokens
    conf.n_tgt_vocab = c.n_tokens
    conf.ffn.activation = GPT_TRANSFORMER['ffn.activation']
    conf.encoder_attn = GPT_TRANSFORMER['encoder_attn']
    return conf


@option(Configs.model)
def _model(c: Configs) -> GPT:
    """
    ### GPT model, initialised N(0, 0.02)
    """
    torch.manual_seed(c.seed)
    encoder = c.transformer.encoder
    if isinstance(c.transformer.encoder_layer, PostLNTransformerLayer):
        # Post-LN layers end normalised; GPT-1 has no final LayerNorm.
        encoder.norm = torch.nn.Identity()
    generator = c.transformer.generator
    if not c.generator_bias:
        # logits $h W^\top$, as GPT-1's and GPT-2's heads compute them
        generator.projection.bias = None
    m = GPT(encoder, crop_positions(c.transformer.src_embed, c.seq_len), generator,
            embedding_dropout=c.embedding_dropout, tie_embeddings=c.tie_embeddings)
    m.apply(init_weights)
    return m.to(c.device)


@option(Configs.optimizer)
def transformer_optimizer(c: Configs) -> GPTOptimizerConfigs:
    """
    ### minGPT optimizer

    Adam on two parameter groups, those that decay and those that do not (with `Muon`, Adam on
    what is not a matrix inside the layers).
    """
    groups = decay_groups(c.model, c.weight_decay, c.weight_decay_params)
    # the weight matrices inside the layers, which `optimizer.optimizer=Muon` takes
    hidden = [p for n, p in c.model.named_parameters() if n.startswith('encoder.layers.') and p.dim() == 2]
    return gpt_optimizer_configs(groups, weight_decay=c.weight_decay, learning_rate=c.learning_rate,
                                 d_model=c.transformer.d_model, hidden_matrices=hidden)


@option(Configs.weight_decay_params, 'linear')
def _decay_linear():
    return linear_weights


@option(Configs.weight_decay_params, 'matrices')
def _decay_matrices():
    return matrix_weights


@option(Configs.tokenizer, 'bpe')
def _bpe(c: Configs):
    """A byte-level BPE of `bpe_vocab_size` tokens, trained on the training split ([corpus](corpus.html))."""
    return corpus.BPE(c.bpe_vocab_size, c.bpe_train_bytes)


@option(Configs.text, 'tiny_shakespeare')
def tiny_shakespeare(c: Configs) -> corpus.Corpus:
    """
    ### Tiny Shakespeare

    The copy that ships with the package ([corpus](corpus.html)): no download, no `data/`.
    """
    return corpus.load(corpus.tiny_shakespeare(), c.tokenizer, seq_len=c.seq_len, vocabulary=c._run_tokenizer)


@option(Configs.text, 'file')
def text_file(c: Configs) -> corpus.Corpus:
    """
    ### A text file or a folder of `.txt` files

    Given with `text=<path>`, which sets `text=file` and `text_file=<path>`.
    """
    if not c.text_file:
        raise UserError('text=file needs a path: text=<file or folder>')
    valid = corpus.source(c.valid_text_file) if c.valid_text_file else None
    return corpus.load(corpus.source(c.text_file), c.tokenizer, seq_len=c.seq_len, valid_src=valid,
                       vocabulary=c._run_tokenizer)


@option(Configs.train_loader, 'shuffled_windows')
def _train_loader(c: Configs):
    return corpus.shuffled_windows(c.text.train, batch_size=c.batch_size, seq_len=c.seq_len, device=c.device,
                                   seed=c.seed, stream='train')


@option(Configs.valid_loader, 'shuffled_windows')
def _valid_loader(c: Configs):
    # An order of its own, so that validation does not move the training order
    return corpus.shuffled_windows(c.text.valid, batch_size=c.batch_size, seq_len=c.seq_len, device=c.device,
                                   seed=c.seed, stream='valid')
