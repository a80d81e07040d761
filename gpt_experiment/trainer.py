r"""
# The training loop

`Trainer` is labml_nn's `NLPAutoRegressionConfigs` with a loop of its own: the configs of an
autoregressive trainer, and the loop as its methods, read top to bottom:

* **`run`**: epochs; each is `inner_iterations` stretches of training steps, and after each
  stretch a validation. At the start of each stretch the model continues the prompt greedily
  (`sample`); at the end of each epoch a checkpoint is saved.
* **`train_step`**: labml_nn's step (forward, loss, backward, clipping, optimizer step), with
  the batch split into micro-batches when it does not fit at once, the learning rate from the
  [schedule](optimizer.html#WarmupCosine), and the loss and accuracy kept on the device
  ([`StepMetrics`](#StepMetrics)) until a report is due.
* **`validate`**: the loss and accuracy on the validation split.
* **`stop_or_save`**: after every step, a stop asked for (Ctrl-C, SIGTERM) ends the run with a
  checkpoint; every `checkpoint_minutes` a checkpoint is added. Validation and sampling check
  for a stop after every batch and every token.

**Where training stands** is one small record, [`Position`](#Position): the epochs done, the
windows of the current epoch trained on, and what comes next there (a sample, training, a
validation). The data order of an epoch is a function of the seed and the epoch
([corpus](corpus.html#batches)), and the learning rate a function of the tokens trained, so the
position, the optimizer's state and the random generators are all a checkpoint needs
(`state_dict`) for a resumed run to train exactly the tokens a straight run trains, with the
same learning rate at every step and, on a CPU in fp32, bit-identical weights.

labml does what it is for: configurations and `@option`s, tracking (`tracker`), checkpoints
(`experiment.save_checkpoint` and the savers of [checkpoints](checkpoints.html)), the run's
folder and the dashboard.
"""

import contextlib
import itertools
import math
import random
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from labml import experiment, logger, tracker
from labml.configs import option
from labml.logger import Text
from labml_helpers.train_valid import hook_model_outputs
from labml_nn.experiments.nlp_autoregression import NLPAutoRegressionConfigs

from . import console, distributed, labml_glue, sampling
from .errors import LossNotFinite, UserError
from .optimizer import WarmupCosine

# What the loop does next at a position
SAMPLE, TRAIN, VALID = 'sample', 'train', 'valid'
# The version of what `state_dict` saves
STATE_FORMAT = 2


@dataclass
class Position:
    """
    <a id="Position"></a>
    Where training stands: `epoch` epochs are done, `window` windows of the next one are
    trained on, and `phase` is what the loop does next there: `sample` (at the start of a
    stretch, then train it), `train` (the rest of a stretch), or `valid` (the validation after
    the stretch that ends at `window`). `tokens` is the tokens trained on, of all the
    processes: labml's global step.
    """
    epoch: int = 0
    window: int = 0
    phase: str = SAMPLE
    tokens: int = 0


class Trainer(NLPAutoRegressionConfigs):
    """
    ## Trainer configurations
    """
    # Passes over the training split
    epochs: int = 32
    # Stretches of training per epoch, each followed by a validation
    inner_iterations: int = 10
    # Windows of `seq_len` tokens per forward pass (0: the whole batch). A batch is split into
    # micro-batches of this size, whose gradients add up to the whole batch's.
    micro_batch_size: int = 0
    # Training steps between two reports of loss and accuracy to labml's tracker. Metrics are
    # summed on the device in between, so that no step waits for the device to report.
    log_interval: int = 10
    # Batches drawn at random from the validation split for each validation (nanoGPT's
    # `eval_iters`), so that validation can run often; the run's last validation is over the
    # whole split. 0: each validation is its stretch's share of the split (labml's way).
    valid_batches: int = 0
    # Number of tokens sampled at every train/valid switch
    sample_tokens: int = 25
    # Wall-clock minutes after which a checkpoint is added at the next step, besides the ones
    # at the end of each epoch (0: only those)
    checkpoint_minutes: float = 10.0
    # Checkpoints kept: the newest N and the one with the best validation loss (0: all)
    keep_checkpoints: int = 3
    # Tokens (not steps) of linear learning-rate warm-up
    warmup_steps: int = 128 * 128 * 20
    # The learning rate after each number of tokens trained: the warm-up, then the cosine
    schedule: WarmupCosine
    # Seed of the random generators, for the initial weights and the data order
    seed: int = 0
    # Precision of the forward pass, through autocast: `float32`, `bfloat16`, `float16`, or
    # `auto`: bf16 where it pays (CUDA with bf16 units; a CPU with them, for wide models), fp32 elsewhere
    dtype: torch.dtype = 'auto'
    # Gradient scaler; it only scales with `float16`, whose gradients would underflow
    grad_scaler: torch.amp.GradScaler
    # Whether training steps run the model through `torch.compile`: `auto` (on CUDA, where it
    # pays; not on a CPU, where compiling takes longer than it saves), `true` or `false`
    compile: bool = 'auto'
    # The model as training steps call it: `model`, or under DDP with several processes.
    # Checkpoints and sampling always use `model` itself.
    train_model: torch.nn.Module

    # Where training stands ([`Position`](#Position)); written only here
    _position: Position
    # Loss and accuracy since the last report, on the device
    _metrics: Optional['StepMetrics'] = None
    # Stop requests (Ctrl-C, SIGTERM) while the loop runs
    _stop: Optional['StopRequests'] = None
    # When a checkpoint is next due, by `checkpoint_minutes`
    _timer: Optional['Timer'] = None
    # `(tokens, loss)` of the last validation
    _last_valid: Optional[Tuple[int, float]] = None
    # `train_model` through `torch.compile`, made at the first step; `False` once it failed
    _compiled = None
    # What shows the training's progress ([console](console.html)), if anything
    _display: Optional[console.Display] = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._position = Position()

    def init(self):
        """labml_nn's set-up, with forward hooks only when activations are logged (each is a call per step)."""
        tracker.set_scalar('accuracy.*', True)
        tracker.set_scalar('loss.*', True)
        # the numbers people watch, in every training report
        for name in ('lr', 'grad_norm', 'tokens_per_second'):
            tracker.set_scalar(name, True)
        tracker.set_text('sampled', False)
        if self.is_log_model_activations:
            hook_model_outputs(self.mode, self.model, 'model')

    # ## The loop

    def run(self, display: Optional[console.Display] = None):
        """Train from where the run stands to the end of the last epoch, showing it on `display`."""
        self.init()
        tracker.set_global_step(self._position.tokens)
        self._timer = Timer(self.checkpoint_minutes)
        self._display = display
        console.show(display)
        try:
            with StopRequests() as self._stop:
                try:
                    while self._position.epoch < self.epochs:
                        self.run_epoch()
                except RuntimeError as e:
                    if not distributed.lost_a_rank(e):
                        raise
                    # Still under the stop handlers: the SIGTERM torchrun sends the survivors
                    # once a rank has died must not cut the checkpoint short.
                    self.lost_a_rank(e)
        finally:
            self._stop = None
            console.show(None)
            if display is not None:
                display.close()

    def run_epoch(self):
        """The stretches of an epoch, each with its sample before and validation after; then a checkpoint."""
        p = self._position
        for k, end in enumerate(self.stretch_ends()):
            # Stretches done before a resume are passed over.
            if (p.window > end) or (p.window == end and p.phase != VALID):
                continue
            if p.phase == SAMPLE:
                self.sample()
                p.phase = TRAIN
            if p.phase == TRAIN:
                self.train(until=end)
                p.phase = VALID
            self.validate(k)
            p.phase = SAMPLE
            tracker.save()
        # The epoch is done: the next one starts at its first window.
        self._position = Position(epoch=p.epoch + 1, tokens=p.tokens)
        if self.is_save_models:
            experiment.save_checkpoint()
            self._timer.restart()

    def tokens_trained(self) -> int:
        """The tokens trained on so far, of all the processes."""
        return self._position.tokens

    def finished(self) -> bool:
        """Whether every epoch is done."""
        return self._position.epoch >= self.epochs

    def stretch_ends(self) -> List[int]:
        """
        The window at which each stretch of an epoch ends: stretch $k$ is batches
        $[k B / I, (k + 1) B / I)$ of the epoch's $B$, as labml_helpers' `BatchIndex` cuts them.
        """
        batches, stretches = len(self.train_loader), self.inner_iterations
        last = self.train_loader.windows_per_epoch
        return [min(last, self.batch_size * ((k + 1) * batches // stretches)) for k in range(stretches)]

    def train(self, until: int):
        """Training steps from the current window to window `until`."""
        p = self._position
        for data, target, windows in self.train_loader.epoch(p.epoch, p.window, until):
            # (the epoch's last batch logs the model's activations and gradients, when asked)
            self.train_step(data, target, p.window + windows >= self.train_loader.windows_per_epoch)
            p.window += windows
            p.phase = TRAIN if p.window < until else VALID
            if self._metrics.optimizer_steps >= self.log_interval or p.window >= until:
                self.report()
            self.stop_or_save()

    # ## The training step

    def train_step(self, data: torch.Tensor, target: torch.Tensor, is_last_batch: bool = False):
        """
        One optimizer step on a batch: labml_nn's `step`, in micro-batches. Each micro-batch's
        mean loss is scaled by its share of the batch's tokens, so that the gradients add up
        to those of the batch's mean loss; with several processes DDP averages them over the
        ranks once, at the last micro-batch.
        """
        if self._metrics is None:
            self._metrics = StepMetrics()
        # Validation and sampling switch the whole model to `eval()`, and back. `train()` walks
        # every module, a cost that shows in a small model's CPU step (`benchmarks/per_tensor.py`),
        # so it runs only when the model is not training already.
        if not self.model.training:
            self.model.train()
        data, target = data.to(self.device), target.to(self.device)
        # labml's global step counts tokens, of all the processes.
        tokens = self._position.tokens + data.numel() * distributed.world().size
        micro = self.micro_batch_size or data.shape[1]
        # (a slice of the batch dimension of sequence-first tensors is not contiguous)
        chunks = [(x.contiguous(), y.contiguous())
                  for x, y in zip(data.split(micro, dim=1), target.split(micro, dim=1))] \
            if micro < data.shape[1] else [(data, target)]
        for i, (x, y) in enumerate(chunks):
            with distributed.sync_gradients(self.train_model, i == len(chunks) - 1), out_of_memory(x.shape[1]):
                with self.mode.update(is_log_activations=is_last_batch and self.is_log_model_activations), \
                        torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    output, *_ = self.forward(x)
                    loss = self.loss_func(output, y)
                share = y.numel() / target.numel()
                self._metrics.add(tokens, loss, output, y, share)
                self.grad_scaler.scale(loss * share).backward()
        # Clip the true gradients, not the scaled ones: the optimizer clips in its step, or,
        # with float16's gradient scaler (which takes the step's own scaling), PyTorch does.
        self.grad_scaler.unscale_(self.optimizer)
        self._metrics.add_grad_norm(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=self.grad_norm_clip, foreach=True)
            if self.grad_scaler.is_enabled() else self.optimizer.clip_grad_norm_(self.grad_norm_clip))
        # The learning rate after this step's tokens
        self.optimizer.set_lr(self.schedule(tokens))
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if is_last_batch and self.is_log_model_params_grads:
            tracker.add('model', self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self._position.tokens = tokens
        tracker.set_global_step(tokens)

    def forward(self, x: torch.Tensor):
        """
        The training forward pass: compiled, when `compile` says so. A compiler that is missing
        or fails makes `compile=auto` train eagerly, said in one line; `compile=true` stops.
        """
        if not self.compile or self._compiled is False:
            return self.train_model(x)
        if self._compiled is None:
            # Static shapes: an epoch's last, smaller batch gets a graph of its own, rather
            # than turning every step's graph into a slower dynamic-shape one.
            self._compiled = torch.compile(self.train_model, dynamic=False)
        try:
            return self._compiled(x)
        except Exception as e:  # torch._dynamo's and the compiler's own errors
            self._compiled = False
            detail = ' '.join(str(e).split())[:160]
            if labml_glue.chosen_value(self, 'compile') == 'true':
                raise UserError(f'compile=true: torch.compile failed ({e.__class__.__name__}: {detail}); '
                                f'compile=false trains eagerly') from None
            logger.log(f'compile=auto: torch.compile failed ({e.__class__.__name__}: {detail}); training eagerly',
                       Text.warning)
            return self.train_model(x)

    # ## Validation and sampling

    @torch.no_grad()
    def validate(self, stretch: int):
        """
        The loss and accuracy after stretch `stretch`. With `valid_batches=N`, `N` batches
        drawn afresh from the split (the run's last validation: all of it); otherwise the
        stretch's share of the epoch's order of the split, as labml_helpers' validator.
        """
        p, loader = self._position, self.valid_loader
        draw = p.epoch * self.inner_iterations + stretch
        if self.valid_batches and not (p.epoch == self.epochs - 1 and stretch == self.inner_iterations - 1):
            batches = itertools.islice(loader.epoch(draw), self.valid_batches)
        elif self.valid_batches:
            batches = loader.epoch(draw)
        else:
            n, k = len(loader), self.inner_iterations
            batches = loader.epoch(p.epoch, loader.batch_size * (stretch * n // k),
                                   loader.batch_size * ((stretch + 1) * n // k))
        metrics = StepMetrics()
        self.model.eval()
        for data, target, _ in batches:
            data, target = data.to(self.device), target.to(self.device)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                output, *_ = self.model(data)
                metrics.add(p.tokens, self.loss_func(output, target), output, target)
            # A stop here drops the partial validation; a resumed run does it again, whole.
            self.check_stop()
        if metrics.steps:
            values = metrics.report(self.device, 'valid')
            self._last_valid = (p.tokens, values['loss.valid'])
            tracker.add(values)
            if self._display is not None:
                self._display.validation(p.tokens, p.epoch, values)

    def sample(self):
        """Greedy continuation of the prompt, printed and tracked as `sampled` (by rank 0)."""
        if not distributed.world().is_main:
            return
        text = ''
        for piece in sampling.greedy_continuation(self.model, self.text.tokenizer, self.prompt,
                                                  n_tokens=self.sample_tokens, seq_len=self.seq_len,
                                                  separator=self.prompt_separator, device=self.device):
            text += piece
            # With several processes the others are not sampling: they hear of a stop at the next step.
            if not distributed.world().is_distributed:
                self.check_stop()
        tracker.add({'sampled': self.prompt + text})
        logger.log([(self.prompt, Text.subtle), (text, Text.value)])

    # ## Reports, stops and checkpoints

    def report(self):
        """Hand the training metrics since the last report to labml's tracker (one device sync)."""
        metrics, self._metrics = self._metrics, None
        if metrics is None or not metrics.steps:
            return
        values = {**metrics.report(self.device, 'train'), 'lr': self.optimizer.param_groups[0]['lr']}
        tracker.add(values)
        tracker.save()
        if self._display is not None:
            self._display.report(self._position.tokens, self._position.epoch, values)

    def stop_or_save(self):
        """
        Between two optimizer steps: stop when asked, or add a checkpoint when
        `checkpoint_minutes` have passed since the last one. With several processes the ranks
        agree first (one tiny all-reduce), whichever of them got the signal or reads the clock,
        so that they all stop, or save, at the same step.
        """
        signum = self._stop.signum or 0
        due = self.is_save_models and self._timer.due()
        if distributed.world().is_distributed:
            signum, due = distributed.agree_max([signum, int(due)])
        if signum:
            self.stop(signum)
        if due:
            # The steps since the last report are checked (a NaN stops the run) before they are saved.
            self.report()
            experiment.save_checkpoint()
            self._timer.restart()

    def check_stop(self):
        """In validation and sampling: stop when asked (the ranks agree, as above)."""
        signum = (self._stop.signum or 0) if self._stop is not None else 0
        if distributed.world().is_distributed:
            signum, = distributed.agree_max([signum])
        if signum:
            self.stop(signum)

    def stop(self, signum: int):
        """Report, save a checkpoint of where training stands, and end the run with the signal."""
        self.report()
        if self.is_save_models:
            experiment.save_checkpoint()
        saved = 'checkpoint saved' if self.is_save_models else 'no checkpoint (is_save_models=false)'
        if self._display is not None:
            # the status line stays as it stands, and what the stop prints comes below it
            self._display.close()
        logger.log(f"Stopped at step {self._position.tokens:,}; {saved}.", Text.danger)
        raise interrupted(signum)

    def last_valid_loss(self) -> Optional[float]:
        """The last validation loss this run took, if it took one (the dashboard's runs list shows it)."""
        return self._last_valid[1] if self._last_valid else None

    def valid_loss_here(self) -> Optional[float]:
        """The validation loss at the step training stands at, if one was taken there (for pruning)."""
        return self._last_valid[1] if self._last_valid and self._last_valid[0] == self._position.tokens else None

    def lost_a_rank(self, e: RuntimeError):
        """
        Another process is gone (`kill -9`, the OOM killer): what it should have sent never
        came. Training stands between two optimizer steps (a collective fails before the step
        it serves), and under DDP every replica holds the same weights: rank 0 saves its own,
        and the run ends in one line.
        """
        saved = self.is_save_models and distributed.world().is_main
        if saved:
            experiment.save_checkpoint()
        # (gloo's messages start with the source file they come from)
        why = ' '.join(re.sub(r'\[[^\]]*\]', '', str(e)).split())[:100]
        raise UserError(f'another process of the run is gone ({why}); '
                        + (f'saved a checkpoint at step {self._position.tokens:,}' if saved else 'rank 0 saves'))

    # ## What a checkpoint holds besides the weights

    def state_dict(self) -> Dict[str, Any]:
        """Everything, besides the model, that the next step depends on."""
        return {
            'format': STATE_FORMAT,
            'position': asdict(self._position),
            'optimizer': self.optimizer.state_dict(),
            'schedule': self.schedule.state_dict(),
            'grad_scaler': self.grad_scaler.state_dict(),
            'rng': _rng_state(),
            'corpus': self.text.digest,
        }

    def load_state_dict(self, state: Dict[str, Any]):
        """Take up training where `state` stands (a checkpoint's, checked by the run store)."""
        self._position = Position(**state['position'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.schedule.load_state_dict(state['schedule'], self._position.tokens)
        self.grad_scaler.load_state_dict(state['grad_scaler'])
        _set_rng_state(state['rng'])
        if state['corpus'] != self.text.digest:
            logger.log(f'The corpus has changed since this checkpoint was saved; training goes on with the text '
                       f'as it is now ({self.text.name}).', Text.warning)


@option(Trainer.schedule)
def _schedule(c: Trainer) -> WarmupCosine:
    """The warm-up of `warmup_steps` tokens, then the cosine to the end of the last epoch."""
    tokens_per_epoch = c.train_loader.windows_per_epoch * c.seq_len
    return WarmupCosine(c.optimizer.param_groups[0]['lr'], c.warmup_steps, c.epochs * tokens_per_epoch,
                        floor=c.optimizer.lr_floor)


@option(Trainer.grad_scaler)
def _grad_scaler(c: Trainer):
    return torch.amp.GradScaler(c.device.type, enabled=c.dtype == torch.float16)


@option(Trainer.train_model)
def _train_model(c: Trainer):
    return distributed.wrap(c.model)


@option(Trainer.compile, 'auto')
def _compile_auto(c: Trainer):
    return c.device.type == 'cuda'


@option(Trainer.compile, 'true')
def _compile():
    return True


@option(Trainer.compile, 'false')
def _eager():
    return False


@contextlib.contextmanager
def out_of_memory(windows: int):
    """
    An allocation that fails in a training step (a CUDA out of memory, a CPU allocator's) is one
    line naming a `micro_batch_size` to try; nothing is saved after it, so the last checkpoint
    stays as it was.
    """
    try:
        yield
    except RuntimeError as e:  # `torch.OutOfMemoryError` is one
        if not (isinstance(e, torch.OutOfMemoryError) or 'DefaultCPUAllocator' in str(e)
                or 'out of memory' in str(e)):
            raise
        hint = f'micro_batch_size={windows // 2}' if windows > 1 else 'a smaller model or seq_len'
        raise UserError(f'out of memory in a forward and backward pass of {windows} windows; try {hint}') from None


# <a id="StepMetrics"></a>
# ## Metrics, summed on the device
#
# labml_nn's trainer hands every step's loss to the tracker as a Python number, which makes
# each step wait for the device. Here the loss and the accuracy of each step are *added up on
# the device*, and handed to labml's tracker every `log_interval` steps and at the end of each
# stretch: one wait per report instead of one per step. The non-finite-loss check is made at
# the report too, and every checkpoint is written after a report, so a bad step stops the run
# before anything it spoiled is saved.

class StepMetrics:
    """The loss, correct predictions, predictions and steps since the last report."""

    def __init__(self):
        self.loss_sum = 0.
        self.correct = 0
        self.count = 0
        self.steps = 0
        # `(global step, loss on the device)` of each forward pass, to name the first bad one
        self.losses: List[Tuple[int, torch.Tensor]] = []
        # Optimizer steps: the sum of their gradient norms, and how many there were
        self.grad_norm_sum = 0.
        self.optimizer_steps = 0
        self.started = time.perf_counter()

    @torch.no_grad()
    def add(self, step: int, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor, share: float = 1.0):
        """
        Add the loss and accuracy of a forward pass at global step `step`; nothing here waits
        for the device. A micro-batch counts as its `share` of its batch's tokens, so that the
        loss reported is the mean of the batches' losses, whatever their micro-batches.
        """
        loss = loss.detach()
        self.losses.append((step, loss))
        self.loss_sum = self.loss_sum + loss.float() * share
        # The predicted token is the most likely one
        self.correct = self.correct + (output.argmax(dim=-1) == target).sum()
        self.count += target.numel()
        self.steps += share

    @torch.no_grad()
    def add_grad_norm(self, norm: torch.Tensor):
        """Add an optimizer step's gradient norm before clipping (a tensor on the device)."""
        self.grad_norm_sum = self.grad_norm_sum + norm.detach().float()
        self.optimizer_steps += 1

    def report(self, device: torch.device, split: str) -> Dict[str, float]:
        """
        The mean loss and the accuracy (`loss.train`, `accuracy.valid`, ...), and after
        training steps `grad_norm` and `tokens_per_second`. One device sync; with several
        processes, the sums of all of them (the gradient norms are the same on every rank).
        """
        sums = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device)
                            for v in (self.loss_sum, self.correct, self.count, self.steps, self.grad_norm_sum)])
        loss, correct, count, steps, grad_norm_sum = distributed.all_reduce_sum(sums).tolist()
        seconds = time.perf_counter() - self.started
        if not math.isfinite(loss):
            # The first step whose own loss is not finite (or the last, if none is alone)
            bad = next((s for s, v in self.losses if not torch.isfinite(v)), self.losses[-1][0])
            name = 'training' if split == 'train' else 'validation'
            raise LossNotFinite(f'{name} loss is not finite at step {bad:,} (tokens)')
        values = {f'loss.{split}': loss / steps, f'accuracy.{split}': correct / count}
        if self.optimizer_steps:
            values.update(grad_norm=grad_norm_sum / self.optimizer_steps, tokens_per_second=count / seconds)
        return values


# ## Stops that never lose work
#
# A run is asked to stop by Ctrl-C (SIGINT) or by SIGTERM, which `docker stop`, SLURM,
# systemd, `timeout` and torchrun send. Either is taken at the next step, validation batch or
# sampled token: a checkpoint is saved (unless `is_save_models=false`) and the run ends with
# `KeyboardInterrupt`, which the command line turns into exit status 130 (SIGINT) or 143
# (SIGTERM). A second Ctrl-C stops at once; SIGTERM never does, since torchrun forwards one to
# its workers right after a terminal's Ctrl-C has reached them.

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """
    `with StopRequests() as stop:` ... `stop.signum` is the first signal received (or `None`).
    On the way out it puts back the handlers it replaced, so that nothing of a finished run
    stays behind in a notebook. Outside the main thread (where Python cannot handle signals)
    it does nothing.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._replaced = {}

    def __enter__(self) -> 'StopRequests':
        if threading.current_thread() is threading.main_thread():
            self._replaced = {s: signal.getsignal(s) for s in SIGNALS}
            for s in SIGNALS:
                signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc):
        for s, handler in self._replaced.items():
            signal.signal(s, handler)
        return False

    def _on_signal(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            # A second Ctrl-C: stop now, without a checkpoint.
            raise interrupted(signum)
        if self.signum is None:
            self.signum = signum
            name = 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
            logger.log(f'\n{name}: stopping after this step' +
                       (' (press again to stop now).' if signum == signal.SIGINT else '.'), Text.danger)


def interrupted(signum: int) -> KeyboardInterrupt:
    """The `KeyboardInterrupt` a stopped run ends with (labml records the run as interrupted); it names the signal."""
    e = KeyboardInterrupt(signal.Signals(signum).name)
    e.signum = signum
    return e


class Timer:
    """Whether `minutes` of wall clock have passed since the last checkpoint (0: never due)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.restart()

    def restart(self):
        self.last = time.monotonic()

    def due(self) -> bool:
        return 0 < self.seconds <= time.monotonic() - self.last


# ## The random generators
#
# Dropout draws from torch's generator (and CUDA's); the state of all of them, Python's and
# numpy's included, goes into checkpoints as tensors and numbers, which load without unpickling.

def _rng_state() -> Dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'python': [version, list(mt), gauss],
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: Dict[str, Any]):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    version, mt, gauss = state['python']
    random.setstate((version, tuple(mt), gauss))
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
