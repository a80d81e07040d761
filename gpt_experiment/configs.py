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

The training step is labml_nn's, with its metrics kept on the device ([metrics](metrics.html)).
Values are checked in [checks](checks.html), and what labml does not offer publicly is in
[labml_glue](labml_glue.html).

Every value can be overridden with labml's `experiment.configs(conf, overrides)`; the
defaults are the labml GPT recipe on Tiny Shakespeare.
"""

import time
import warnings

import numpy as np
import torch

from labml import experiment, lab, logger, monit, tracker
from labml.configs import option
from labml.logger import Text
from labml_helpers.device import DeviceConfigs
from labml_helpers.train_valid import BatchIndex, Trainer, hook_model_outputs
from labml_nn.experiments.nlp_autoregression import NLPAutoRegressionConfigs
from labml_nn.optimizers.configs import OptimizerConfigs
from labml_nn.transformers import TransformerConfigs

from . import attention, console, corpus, data, distributed, gpt1, labml_glue, sampling, stops, tokenizers  # noqa: F401 (attention and gpt1 register options)
from .errors import UserError
from .metrics import StepMetrics, learning_rate
from .model import GPT, crop_positions, init_weights
from .optimizer import (DecayRule, clip_grad_norm_, decay_groups, gpt_optimizer_configs, linear_weights,
                        matrix_weights)

# We replace labml_nn's `tiny_shakespeare` option with one that checks its input; labml warns
# about the replacement each time a `Configs` is made.
warnings.filterwarnings('ignore', message='Overriding option for text: tiny_shakespeare')


class TrainingInterrupted(Exception):
    """Raised after the step in progress when a stop was requested (Ctrl-C, SIGTERM); carries the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


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
    # weight but biases and gains); the option is the rule itself ([optimizer](optimizer.html))
    weight_decay_params: DecayRule = 'linear'

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
    # When the last checkpoint was saved (`time.monotonic()`)
    _last_save = 0.0
    # Loss and accuracy since the last report, on the device ([metrics](metrics.html))
    _metrics = None
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
        # the numbers people watch ([metrics](metrics.html)), printed in every report
        for name in ('lr', 'grad_norm', 'tokens_per_second'):
            tracker.set_scalar(name, True)
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
        if self._metrics is None:
            self._metrics = StepMetrics()
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
        self._metrics.add(tracker.get_global_step(), loss, output, target)

        if self.mode.is_train:
            self.grad_scaler.scale(loss).backward()
            # Clip the true gradients, not the scaled ones.
            self.grad_scaler.unscale_(self.optimizer)
            grad_norm = clip_grad_norm_(self.optimizer, self.model.parameters(), max_norm=self.grad_norm_clip)
            self._metrics.add_grad_norm(grad_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            if batch_idx.is_last and self.is_log_model_params_grads:
                tracker.add('model', self.model)
            self.optimizer.zero_grad(set_to_none=True)
            if batch_idx.is_last and self.valid_batches > 0 and self._epochs_done + 1 >= self.epochs:
                # The run's last validation, right after this epoch, is over the whole split.
                self.validator.set_data_loader(self.valid_loader)

        # Report every `log_interval` steps and at the end of each train or valid stretch.
        ends_stretch = batch_idx.idx + 1 >= (batch_idx.iteration + 1) * batch_idx.total // batch_idx.total_iterations
        if ends_stretch or (self.mode.is_train and self._metrics.steps >= self.log_interval):
            self._report()
        if self.mode.is_train:
            self._stop_or_save()

    def _stop_or_save(self):
        """
        Between two whole optimizer steps: stop when asked (Ctrl-C, SIGTERM), or add a checkpoint
        when `checkpoint_minutes` have passed since the last one. With several processes the
        ranks agree first (one tiny all-reduce), whichever of them got the signal or reads the
        clock, so that they all stop, or save, at the same step.
        """
        signum = self._stop.signum if self._stop is not None and self._stop.signum else 0
        due = self.is_save_models and 0 < self.checkpoint_minutes * 60 <= time.monotonic() - self._last_save
        if distributed.world().is_distributed:
            signum, due = distributed.agree_max([signum, int(due)])
        if not (signum or due):
            return
        # Report (and check) the steps since the last report, here, where labml still names
        # them `loss.train` and `accuracy.train`.
        if self._metrics is not None:
            self._report()
        if signum:
            raise TrainingInterrupted(signum)
        experiment.save_checkpoint()
        self._last_save = time.monotonic()

    def _report(self):
        """Hand the metrics since the last report to labml's tracker (one device sync)."""
        metrics, self._metrics = self._metrics, None
        tracker.add(metrics.report(self.device, 'training' if self.mode.is_train else 'validation'))
        if self.mode.is_train:
            tracker.add('lr', learning_rate(self.optimizer))
        # Piped, each report is one line of the log ([console](console.html)).
        with console.report_line():
            tracker.save()

    def sample(self):
        """Greedy continuation of the prompt, printed and tracked as `sampled` (by rank 0)."""
        if not distributed.world().is_main:
            return
        out = sampling.greedy_continuation(self.model, self.text, self.prompt, n_tokens=self.sample_tokens,
                                           seq_len=self.seq_len, separator=self.prompt_separator,
                                           device=self.device)
        tracker.add({'sampled': self.prompt + ''.join(out)})
        logger.log([(self.prompt, Text.subtle), (''.join(out), Text.value)])

    def run(self):
        """
        labml's training loop, stopped at step granularity by Ctrl-C or SIGTERM: the step in
        progress finishes, a checkpoint is saved and the run ends ([stops](stops.html)).
        """
        n_params = sum(p.numel() for p in self.model.parameters())
        logger.log([('Model parameters: ', Text.key), (f'{n_params:,}', Text.value)])
        # The tokenizer goes with the run, for `generate`.
        tokenizers.save(corpus.tokenizer_of(self.text), labml_glue.run_path())
        with monit.section('Initialize'):
            self.init()
        _ = self.validator
        _ = self.trainer
        with stops.StopRequests() as self._stop:
            # `iter` installs labml's own SIGINT handler; ours goes back on top for the loop,
            # and leaving the `with` restores what was there before either.
            loop = iter(self.training_loop)
            self._stop.install()
            try:
                for _ in _epochs(loop):
                    # labml's loop has just saved the end of the last epoch
                    self._last_save = time.monotonic()
                    self.run_step()
                    self._epochs_done += 1
            except TrainingInterrupted as e:
                labml_glue.close_training_loop()
                if self.is_save_models:
                    save_checkpoint_once()
                saved = 'checkpoint saved' if self.is_save_models else 'no checkpoint (is_save_models=false)'
                logger.log(f'Stopped at step {tracker.get_global_step():,}; {saved}.', Text.danger)
                raise stops.interrupted(e.signum) from None
            finally:
                self._stop = None


def _epochs(loop):
    """Step labml's `TrainingLoop` without calling `iter` on it again."""
    while True:
        try:
            yield next(loop)
        except StopIteration:
            return


def save_checkpoint_once():
    """Save a checkpoint at the current global step unless one is already there."""
    if not (labml_glue.checkpoint_path() / str(tracker.get_global_step())).exists():
        experiment.save_checkpoint()


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
    groups = decay_groups(c.model, c.weight_decay, c.weight_decay_params)
    return gpt_optimizer_configs(groups, weight_decay=c.weight_decay, learning_rate=c.learning_rate,
                                 d_model=c.transformer.d_model, warmup_tokens=c.warmup_steps,
                                 tokens_per_step=c.batch_size * c.seq_len, total_steps=c.epochs * len(c.train_loader))


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


@option(Configs.validator, 'valid_batches')
def _validator(c: Configs) -> Trainer:
    """
    labml_helpers' validator. With `valid_batches=N`, every validation is N batches drawn at
    random from the split, instead of the stretch's share of it ([data](data.html)); `step`
    hands it the whole split for the run's last validation.
    """
    random = c.valid_batches > 0
    return Trainer(name='Valid', mode=c.mode,
                   data_loader=data.RandomBatches(c.valid_loader, c.valid_batches) if random else c.valid_loader,
                   inner_iterations=1 if random else c.inner_iterations,
                   state_modules=c.state_modules, is_track_time=c.is_track_time, step=c.step)


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
