"""
# Configurations

`Configs` is the whole experiment as labml configurations. It extends labml_nn's
`NLPAutoRegressionConfigs` (the trainer for autoregressive language models: data, loaders,
training/validation loop, loss, accuracy, periodic samples) and adds, as `@option`s:

* `transformer`: labml_nn's `TransformerConfigs`, sized from the vocabulary, with GELU;
* `model`: the [GPT](model.html) with N(0, 0.02) initialisation;
* `optimizer`: the minGPT weight-decay groups on `AdamWarmupCosineDecay`
  ([optimizer](optimizer.html)), its warm-up and length in optimizer steps
  ([lr_schedule](lr_schedule.html));
* `text`: a [corpus](corpus.html), read, checked, split and tokenised; `train_loader` and
  `valid_loader`: [batches](batches.html) cut from it by index.

The training step is labml_nn's, with its metrics kept on the device: `init`, `step`, `sample`
and `run` are labml's hooks, and call [steps](steps.html). Values are checked in
[checks](checks.html), and what labml does not offer publicly is in [labml_glue](labml_glue.html).

Every value can be overridden with labml's `experiment.configs(conf, overrides)`; the
defaults are the labml GPT recipe on Tiny Shakespeare.
"""

import warnings

import torch

from labml import logger
from labml.configs import option
from labml.logger import Text
from labml_helpers.device import DeviceConfigs
from labml_helpers.train_valid import BatchIndex, Trainer
from labml_nn.experiments.nlp_autoregression import NLPAutoRegressionConfigs
from labml_nn.optimizers.configs import OptimizerConfigs
from labml_nn.transformers import TransformerConfigs

from . import attention, gpt1  # noqa: F401 (they register options)
from . import batches, corpus, distributed, labml_glue, lr_schedule, precision, steps, tokenizers
from .errors import UserError
from .model import GPT, crop_positions, init_weights
from .optimizer import (GPT_OPTIMIZER, DecayRule, decay_groups, gpt_optimizer_configs, linear_weights,
                        matrix_weights)

# We replace labml_nn's `tiny_shakespeare` option (a download into `data/`) with the copy in
# the package; labml warns about the replacement each time a `Configs` is made.
warnings.filterwarnings('ignore', message='Overriding option for text: tiny_shakespeare')


class Configs(NLPAutoRegressionConfigs):
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
    # Weight decay of linear weights
    weight_decay: float = 0.1
    # Number of *tokens* of linear learning-rate warm-up
    warmup_steps: int = 128 * 128 * 20
    # Maximum learning rate
    learning_rate: float = 6e-4
    # GPT's optimizer
    optimizer = 'transformer_optimizer'
    # Which parameters decay: `linear` (minGPT: `nn.Linear` weights) or `matrices` (GPT-1: every
    # weight but biases and gains); the option is the rule itself ([optimizer](optimizer.html))
    weight_decay_params: DecayRule = 'linear'

    # GPT-1 options (see [gpt1](gpt1.html)), off by default

    # The generator's weight is the token embedding matrix
    tie_embeddings: bool = False
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
    # Seed of the random generators, for the initial weights and the batch order
    seed: int = 0
    # Precision of the forward pass, through autocast: `float32`, `bfloat16`, `float16`, or `auto`
    # (bf16 where the hardware has bf16 units, fp32 elsewhere)
    dtype: torch.dtype = 'float32'
    # Gradient scaler; it only scales with `float16`, whose gradients would underflow
    grad_scaler: torch.amp.GradScaler
    # `RUN[:STEP]`: a new run that starts from the weights of that run's checkpoint (the newest
    # complete one when no step is given), with its tokenizer and shape; everything else starts
    # fresh ([finetune](finetune.html))
    init_from: str = ''
    # Whether training steps run the model through `torch.compile`
    compile: bool = False
    # The model as training steps call it: `model` itself, or its compiled wrapper. Checkpoints
    # and sampling always use `model`, so state-dict names never carry the wrapper's prefix.
    train_model: torch.nn.Module

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
    # Passes over the training split
    epochs: int = 32
    # Train/valid switches per epoch (a validation after each stretch of training)
    inner_iterations: int = 10
    # Number of tokens sampled at every train/valid switch
    sample_tokens: int = 25

    # A text file or a folder of `.txt` files, with `text=file`
    text_file: str = ''
    # Optional separate validation file; otherwise the last 10% of `text` validates
    valid_text_file: str = ''

    train_loader = 'shuffled_windows'
    valid_loader = 'shuffled_windows'

    # Wall-clock minutes after which a checkpoint is added at the next step, besides the ones
    # at the end of each epoch (0: only those)
    checkpoint_minutes: float = 10.0

    # Training steps between two reports of loss and accuracy to labml's tracker. Metrics are
    # summed on the device in between, so that no step waits for the device to report.
    log_interval: int = 10
    # Batches drawn at random from the validation split for each validation (nanoGPT's
    # `eval_iters`), so that validation can run often; the run's last validation is over the
    # whole split. 0: each validation is its stretch's share of the split (labml's way).
    valid_batches: int = 0
    validator = 'valid_batches'

    # Epochs to run: `epochs`, less those a resumed checkpoint has done
    loop_count = 'remaining_epochs'

    # Stop requests (Ctrl-C, SIGTERM) while training ([stops](stops.html))
    _stop = None
    # When a checkpoint is next due, by `checkpoint_minutes` ([checkpoints](checkpoints.html))
    _checkpoint_timer = None
    # Loss and accuracy since the last report, on the device ([metrics](metrics.html))
    _metrics = None
    # Whole epochs trained (saved in checkpoints, for resume)
    _epochs_done = 0
    # The tokenizer of the run being resumed, which the corpus is encoded with (never rebuilt)
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

    # labml_helpers' loop calls these methods; the work is in [steps](steps.html).

    def init(self):
        steps.init(self)

    def step(self, batch, batch_idx: BatchIndex):
        steps.step(self, batch, batch_idx)

    def sample(self):
        steps.sample(self)

    def run(self):
        steps.run(self)


@option(Configs.device, 'device_configs')
def _device_configs() -> DeviceConfigs:
    conf = DeviceConfigs()
    # Under torchrun, each process trains on the GPU of its local rank.
    conf.cuda_device = distributed.world().local_rank
    return conf


@option(Configs.dtype, 'float32')
def _float32():
    return torch.float32


@option(Configs.dtype, 'bfloat16')
def _bfloat16():
    return torch.bfloat16


@option(Configs.dtype, 'float16')
def _float16():
    return torch.float16


@option(Configs.dtype, 'auto')
def _auto_dtype(c: Configs):
    # bf16 autocast where the device has bf16 units, fp32 elsewhere ([precision](precision.html))
    dtype = precision.auto_dtype(c.device)
    logger.log([('dtype=auto: ', Text.key), (str(dtype).replace('torch.', ''), Text.value)])
    return dtype


@option(Configs.grad_scaler)
def _grad_scaler(c: Configs):
    return torch.amp.GradScaler(c.device.type, enabled=c.dtype == torch.float16)


@option(Configs.state_modules)
def _no_state_modules():
    """No state modules: accuracy is counted on the device by `step`."""
    return []


@option(Configs.train_model)
def _train_model(c: Configs):
    model = distributed.wrap(c.model)
    # Static shapes: an epoch's last, smaller batch gets a graph of its own, rather than
    # turning every step's graph into a slower dynamic-shape one.
    return torch.compile(model, dynamic=False) if c.compile else model


@option(Configs.loop_count)
def remaining_epochs(c: Configs):
    if c._epochs_done >= c.epochs:
        raise UserError(f'the checkpoint has done {c._epochs_done} of epochs={c.epochs}; '
                        f'give a larger epochs=N to train longer')
    return c.epochs - c._epochs_done


@option(Configs.d_model, 'transformer_width')
def _transformer_width(c: Configs) -> int:
    return c.transformer.d_model


# What the `GPT` option sets in labml_nn's `TransformerConfigs`, over that class's defaults:
# GPT's GELU, and labml_nn's attention on PyTorch's fused kernel (the same computation and
# parameters, faster: benchmarks/throughput.py; `transformer.encoder_attn=mha` is the stock module).
GPT_TRANSFORMER = {'ffn.activation': 'GELU', 'encoder_attn': 'sdpa'}
# The defaults a run has for the keys of nested configs, for `--help`: what the options set, and
# what follows other keys
EFFECTIVE_DEFAULTS = {
    **{f'transformer.{k}': v for k, v in GPT_TRANSFORMER.items()},
    **{f'optimizer.{k}': v for k, v in GPT_OPTIMIZER.items()},
    'optimizer.learning_rate': '= learning_rate', 'optimizer.weight_decay': '= weight_decay',
    'optimizer.warmup': '= warmup_steps / (batch_size x seq_len)', 'optimizer.total_steps': '= epochs x batches of an epoch',
}


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
    if isinstance(c.transformer.encoder_layer, gpt1.PostLNTransformerLayer):
        # Post-LN layers end normalised; GPT-1 has no final LayerNorm.
        encoder.norm = torch.nn.Identity()
    m = GPT(encoder, crop_positions(c.transformer.src_embed, c.seq_len), c.transformer.generator,
            embedding_dropout=c.embedding_dropout, tie_embeddings=c.tie_embeddings)
    m.apply(init_weights)
    return m.to(c.device)


@option(Configs.optimizer)
def transformer_optimizer(c: Configs) -> OptimizerConfigs:
    """
    ### minGPT optimizer

    Warm-up and total length are given in tokens and epochs, and converted to optimizer steps
    ([lr_schedule](lr_schedule.html)).
    """
    groups = decay_groups(c.model, c.weight_decay, c.weight_decay_params)
    return gpt_optimizer_configs(groups, weight_decay=c.weight_decay, learning_rate=c.learning_rate,
                                 d_model=c.transformer.d_model,
                                 warmup=lr_schedule.warmup(c.warmup_steps, c.batch_size * c.seq_len),
                                 total_steps=lr_schedule.total_steps(c.epochs, len(c.train_loader)))


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
    return batches.shuffled_windows(c.text.train, batch_size=c.batch_size, seq_len=c.seq_len,
                                    device=c.device, seed=c.seed)


@option(Configs.valid_loader, 'shuffled_windows')
def _valid_loader(c: Configs):
    # Its own generator, so that validation does not move the training order
    return batches.shuffled_windows(c.text.valid, batch_size=c.batch_size, seq_len=c.seq_len,
                                    device=c.device, seed=c.seed + 1)


@option(Configs.validator, 'valid_batches')
def _validator(c: Configs) -> Trainer:
    """labml_helpers' validator, on `valid_batches` random batches when that is set ([steps](steps.html))."""
    return steps.validator(c)
