"""
# Configurations

`Configs` is the whole experiment as labml configurations. It extends labml_nn's
`NLPAutoRegressionConfigs` (the trainer for autoregressive language models: data, loaders,
training/validation loop, loss, accuracy, periodic samples) and adds, as `@option`s:

* `transformer`: labml_nn's `TransformerConfigs`, sized from the vocabulary, with GELU;
* `model`: the [GPT](model.html) with N(0, 0.02) initialisation;
* `optimizer`: the minGPT weight-decay groups on `AdamWarmupCosineDecay`
  ([optimizer](optimizer.html));
* `text`, `train_loader`, `valid_loader`: [data](data.html) that checks what it reads and
  cuts batches by index.

Every value can be overridden with labml's `experiment.configs(conf, overrides)`; the
defaults are the labml GPT recipe on Tiny Shakespeare.
"""

import math
import signal
import warnings

import numpy as np
import torch

from labml import experiment, lab, logger, monit, tracker
from labml.configs import option
from labml.logger import Text
from labml_helpers.device import DeviceConfigs
from labml_helpers.train_valid import BatchIndex, hook_model_outputs
from labml_nn.experiments.nlp_autoregression import NLPAutoRegressionConfigs
from labml_nn.optimizers.configs import OptimizerConfigs
from labml_nn.transformers import TransformerConfigs

from . import attention, corpus, data, distributed, gpt1, sampling, tokenizers  # noqa: F401 (attention and gpt1 register options)
from .errors import UserError
from .model import GPT, crop_positions, init_weights
from .optimizer import clip_grad_norm_, gpt_optimizer_configs

# We replace labml_nn's `tiny_shakespeare` option with one that checks its input; labml warns
# about the replacement each time a `Configs` is made.
warnings.filterwarnings('ignore', message='Overriding option for text: tiny_shakespeare')


class TrainingInterrupted(Exception):
    """Raised after the step in progress when the user pressed Ctrl-C."""


class LossNotFinite(Exception):
    """Raised at the report that finds a NaN or infinite loss; nothing is saved after it."""


class Configs(NLPAutoRegressionConfigs):
    """
    ## GPT experiment configurations
    """
    # GPT model
    model: GPT
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
    # weight but biases and gains)
    weight_decay_params = 'linear'

    # GPT-1 options (see [gpt1](gpt1.html)), off by default
    # The generator's weight is the token embedding matrix
    tie_embeddings: bool = False
    # Dropout on the token and position embeddings
    embedding_dropout: float = 0.0
    # Vocabulary size of `tokenizer=bpe`, and how much of the training split trains it
    bpe_vocab_size: int = tokenizers.DEFAULT_BPE_VOCAB_SIZE
    bpe_train_bytes: int = 100_000_000

    # Training device, `device.use_cuda` and `device.cuda_device`. labml_nn's default is one
    # `DeviceConfigs` object shared by every instance, which a second run in the same process
    # could not override again; this option makes a fresh one per `Configs`.
    device = 'device_configs'
    # Seed of the random generators, for the initial weights and the batch order
    seed: int = 0
    # Precision of the forward pass, through autocast: `float32`, `bfloat16` or `float16`
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
    tokenizer = 'character'
    text = 'tiny_shakespeare'
    prompt: str = 'It is '
    prompt_separator: str = ''
    seq_len: int = 128
    batch_size: int = 128
    epochs: int = 32
    inner_iterations: int = 10
    # Number of tokens sampled at every train/valid switch
    sample_tokens: int = 25

    # A text file or a folder of `.txt` files, with `text=file`
    text_file: str = ''
    # Optional separate validation file; otherwise the last 10% of `text` validates
    valid_text_file: str = ''

    train_loader = 'shuffled_windows'
    valid_loader = 'shuffled_windows'

    # Training steps between two reports of loss and accuracy to labml's tracker. Metrics are
    # summed on the device in between, so that no step waits for the device to report.
    log_interval: int = 10

    # Epochs to run: `epochs`, less those a resumed checkpoint has done
    loop_count = 'remaining_epochs'

    # Set by the Ctrl-C handler while training
    _interrupted = False
    # Loss sum, correct predictions, predictions and steps since the last report
    _sums = None
    # `(global step, loss on the device)` of the steps since the last report, to name a bad one
    _recent = None
    # Whole epochs trained (saved in checkpoints, for resume)
    _epochs_done = 0
    # The tokenizer of the run being resumed, which the corpus is encoded with (never rebuilt)
    _run_tokenizer = None

    def init(self):
        """
        labml_nn's set-up without its `Accuracy` state module (we count accuracy on the device)
        and with forward hooks only when activations are logged, since each hook is a Python
        call per module per step.
        """
        tracker.set_scalar('accuracy.*', True)
        tracker.set_scalar('loss.*', True)
        tracker.set_text('sampled', False)
        if self.is_log_model_activations:
            hook_model_outputs(self.mode, self.model, 'model')

    def step(self, batch, batch_idx: BatchIndex):
        """
        ### One training or validation step

        The same computation as labml_nn's `NLPAutoRegressionConfigs.step`, but the loss and
        accuracy stay on the device until a report is due, and the model's gradients are
        released (`set_to_none`) rather than zero-filled.
        """
        self.model.train(self.mode.is_train)
        data, target = batch[0].to(self.device), batch[1].to(self.device)
        if self.mode.is_train:
            # labml's global step counts tokens, of all the processes.
            tracker.add_global_step(data.numel() * distributed.world().size)

        with self.mode.update(is_log_activations=batch_idx.is_last and self.is_log_model_activations), \
                torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            # Validation runs the plain module: compiled, it would be another graph to compile
            # (without gradients) for a small share of the time.
            output, *_ = (self.train_model if self.mode.is_train else self.model)(data)
            loss = self.loss_func(output, target)
        self._accumulate(loss, output, target)

        if self.mode.is_train:
            self.grad_scaler.scale(loss).backward()
            # Clip the true gradients, not the scaled ones.
            self.grad_scaler.unscale_(self.optimizer)
            clip_grad_norm_(self.optimizer, self.model.parameters(), max_norm=self.grad_norm_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            if batch_idx.is_last and self.is_log_model_params_grads:
                tracker.add('model', self.model)
            self.optimizer.zero_grad(set_to_none=True)

        # Report every `log_interval` steps and at the end of each train or valid stretch.
        ends_stretch = batch_idx.idx + 1 >= (batch_idx.iteration + 1) * batch_idx.total // batch_idx.total_iterations
        if ends_stretch or (self.mode.is_train and self._sums[3] >= self.log_interval):
            self._report()
        # Ctrl-C stops training here, between two whole optimizer steps.
        if self.mode.is_train and self._interrupted:
            raise TrainingInterrupted()

    @torch.no_grad()
    def _accumulate(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor):
        if self._sums is None:
            self._sums = [0., 0, 0, 0]
            self._recent = []
        self._recent.append((tracker.get_global_step(), loss.detach()))
        correct = (output.argmax(dim=-1) == target).sum()
        self._sums = [self._sums[0] + loss.detach().float(), self._sums[1] + correct,
                      self._sums[2] + target.numel(), self._sums[3] + 1]

    def _report(self):
        """
        Hand the mean loss and the accuracy since the last report to labml (one device sync;
        with several processes, summed over them first).

        The loss is checked here rather than at every step, which would wait for the device at
        every step: a NaN or infinity in any step makes the sum non-finite, and every
        checkpoint is written after a report (labml saves between epochs, which end with one;
        Ctrl-C reports before saving). So a bad step stops the run at most `log_interval` steps
        later, with weights that the steps since may have spoiled, but before they are saved.
        """
        loss_sum, correct, count, steps = self._sums
        sums = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device)
                            for v in (loss_sum, correct, count, steps)])
        loss, correct, count, steps = distributed.all_reduce_sum(sums).tolist()
        recent, self._sums, self._recent = self._recent, None, None
        if not math.isfinite(loss):
            bad = next((s for s, v in recent if not torch.isfinite(v)), recent[-1][0])
            raise LossNotFinite(f'{"training" if self.mode.is_train else "validation"} loss is not finite '
                                f'at step {bad:,} (tokens)')
        tracker.add({'loss.': loss / steps, 'accuracy.': correct / count})
        tracker.save()

    def sample(self):
        """Greedy continuation of the prompt, printed and tracked as `sampled` (by rank 0)."""
        if not distributed.world().is_main:
            return
        out = sampling.greedy_continuation(self.model, self.text, self.prompt, n_tokens=self.sample_tokens,
                                           seq_len=self.seq_len, separator=self.prompt_separator,
                                           device=self.device)
        tracker.add({'sampled': self.prompt + ''.join(out)})
        logger.log([(self.prompt, Text.subtle)] + [(t, Text.value) for t in out])

    def run(self):
        """
        labml's training loop, with Ctrl-C taken at step granularity: the first press finishes
        the step in progress, saves a checkpoint and stops; a second press stops at once.
        """
        n_params = sum(p.numel() for p in self.model.parameters())
        logger.log([('Model parameters: ', Text.key), (f'{n_params:,}', Text.value)])
        # The tokenizer goes with the run, for `generate`.
        tokenizers.save(corpus.tokenizer_of(self.text), experiment._experiment_singleton().run.run_path)
        with monit.section('Initialize'):
            self.init()
        _ = self.validator
        _ = self.trainer
        # `iter` installs labml's own SIGINT handler; ours replaces it for the loop.
        loop = iter(self.training_loop)
        default_handler = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            for _ in _epochs(loop):
                self.run_step()
                self._epochs_done += 1
        except TrainingInterrupted:
            monit.finish_loop()
            # Check the steps since the last report before saving them.
            if self._sums is not None:
                self._report()
            tracker.save()
            tracker.new_line()
            save_checkpoint_once()
            logger.log(f'Interrupted at step {tracker.get_global_step():,}; checkpoint saved.', Text.danger)
            raise KeyboardInterrupt() from None
        finally:
            signal.signal(signal.SIGINT, default_handler)

    def _on_sigint(self, sig, frame):
        if self._interrupted:
            raise KeyboardInterrupt()
        self._interrupted = True
        logger.log('\nCtrl-C: stopping after this step (press again to stop now).', Text.danger)


def _epochs(loop):
    """Step labml's `TrainingLoop` without calling `iter` on it again."""
    while True:
        try:
            yield next(loop)
        except StopIteration:
            return


def save_checkpoint_once():
    """Save a checkpoint at the current global step unless one is already there."""
    run_path = experiment._experiment_singleton().run.checkpoint_path
    if not (run_path / str(tracker.get_global_step())).exists():
        experiment.save_checkpoint()


def check_configs(c: Configs):
    """
    Refuse impossible configurations before anything is built or written. Sizes must be
    positive, heads must divide the width, and the prompt must be in the vocabulary (which
    loads the data, and with it checks the corpus).
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
    if c.bpe_vocab_size < 257:
        raise UserError(f'bpe_vocab_size must be at least 257 (the 256 bytes and one merge), got {c.bpe_vocab_size}')
    sampling.check_prompt(c.prompt, c.text)


@option(Configs.device, 'device_configs')
def _device_configs() -> DeviceConfigs:
    return DeviceConfigs()


@option(Configs.dtype, 'float32')
def _float32():
    return torch.float32


@option(Configs.dtype, 'bfloat16')
def _bfloat16():
    return torch.bfloat16


@option(Configs.dtype, 'float16')
def _float16():
    return torch.float16


@option(Configs.grad_scaler)
def _grad_scaler(c: Configs):
    return torch.amp.GradScaler(c.device.type, enabled=c.dtype == torch.float16)


@option(Configs.state_modules)
def _no_state_modules():
    """No state modules: accuracy is counted on the device by `step`."""
    return []


def compute_ahead(c: Configs):
    """
    Compute now every config that training reads. labml rewrites the run's `configs.yaml` (a
    pure-Python YAML dump of every key, about a fifth of a second) each time a config is first
    computed after `experiment.start()`; computed lazily, the first steps would pay for two
    dozen of them. The loop count waits: it depends on the checkpoint a resumed run loads at
    the start.
    """
    for key in dir(c):
        if key not in ('loop_count', 'training_loop'):
            getattr(c, key)


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


@option(Configs.transformer, 'GPT')
def _transformer_configs(c: Configs) -> TransformerConfigs:
    """
    ### Transformer configurations

    labml_nn's configurable transformer, with the vocabulary sizes of our text and the GELU
    activation that GPT uses in its feed-forward layers.
    """
    conf = TransformerConfigs()
    # The top-level `d_model` (labml_nn's) sets the width; `transformer.d_model` overrides it.
    conf.d_model = c.d_model
    conf.n_src_vocab = c.n_tokens
    conf.n_tgt_vocab = c.n_tokens
    conf.ffn.activation = 'GELU'
    # labml_nn's attention on PyTorch's fused kernel: the same computation and parameters,
    # faster (benchmarks/throughput.py); `transformer.encoder_attn=mha` is the stock module.
    conf.encoder_attn = 'sdpa'
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

    Warm-up and total length are given in tokens and converted to optimizer steps.
    """
    conf = gpt_optimizer_configs(c.model, weight_decay=c.weight_decay, learning_rate=c.learning_rate,
                                 d_model=c.transformer.d_model, warmup_tokens=c.warmup_steps,
                                 tokens_per_step=c.batch_size * c.seq_len,
                                 total_steps=c.epochs * len(c.train_loader))
    conf.parameters = gpt1.decay_groups(c.model, c.weight_decay, c.weight_decay_params)
    return conf


@option(Configs.weight_decay_params, 'linear')
def _decay_linear():
    return 'linear'


@option(Configs.weight_decay_params, 'matrices')
def _decay_matrices():
    return 'matrices'


@option(Configs.tokenizer, 'bpe')
def _bpe(c: Configs):
    """A byte-level BPE of `bpe_vocab_size` tokens, trained on the training split ([corpus](corpus.html))."""
    return corpus.BPE(c.bpe_vocab_size, c.bpe_train_bytes)


@option(Configs.text, 'tiny_shakespeare')
def tiny_shakespeare(c: Configs):
    """
    ### Tiny Shakespeare

    At labml's data path (`data/` beside `.labml.yaml`), downloaded when absent.
    """
    path = data.fetch_tiny_shakespeare(lab.get_data_path() / 'tiny_shakespeare.txt')
    return corpus.load(path, c.tokenizer, seq_len=c.seq_len, vocabulary=c._run_tokenizer)


@option(Configs.text, 'file')
def text_file(c: Configs):
    """
    ### A text file or a folder of `.txt` files

    Given with `text=<path>`, which sets `text=file` and `text_file=<path>`.
    """
    if not c.text_file:
        raise UserError('text=file needs a path: text=<file or folder>')
    valid = c.valid_text_file or None
    return corpus.load(c.text_file, c.tokenizer, seq_len=c.seq_len, valid_path=valid, vocabulary=c._run_tokenizer)


@option(Configs.train_loader, 'shuffled_windows')
def _train_loader(c: Configs):
    return _shuffled_windows(c, 'train', seed=c.seed)


@option(Configs.valid_loader, 'shuffled_windows')
def _valid_loader(c: Configs):
    return _shuffled_windows(c, 'valid', seed=c.seed + 1)


def _shuffled_windows(c: Configs, split: str, *, seed: int) -> data.ShuffledWindows:
    """
    Batches of a split. A memory-mapped token file stays on disk and only batches move to the
    device; the order has its own seeded generator (saved in checkpoints), and each process of
    a distributed run keeps its slice of every batch.
    """
    tokens = corpus.split_tokens(c.text, split)
    tokens = tokens if isinstance(tokens, np.ndarray) else tokens.to(c.device)
    w = distributed.world()
    return data.ShuffledWindows(tokens, batch_size=c.batch_size, seq_len=c.seq_len, device=c.device,
                                generator=torch.Generator().manual_seed(seed), rank=w.rank, world_size=w.size)
