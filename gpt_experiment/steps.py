"""
# Training steps

What labml's training loop does at each step, here rather than in [configs](configs.html), so
that `Configs` stays fields and options. labml_helpers' loop calls `Configs`' `init`, `step`,
`sample` and `run`; each is one line there that calls its function here, with the configs.

* `step`: one training or validation step, labml_nn's `NLPAutoRegressionConfigs.step` with its
  loss and accuracy kept on the device ([metrics](metrics.html)) until a report is due;
* `stop_or_save`: between two optimizer steps, stop when asked ([stops](stops.html)), or add a
  checkpoint when `checkpoint_minutes` have passed ([checkpoints](checkpoints.html));
* `run`: labml's loop of epochs, which a stop request ends at step granularity;
* `validator`: labml_helpers' validator, on random batches with `valid_batches=N`.
"""

import torch

from labml import experiment, logger, monit, tracker
from labml.logger import Text
from labml_helpers.train_valid import BatchIndex, Trainer, hook_model_outputs

from . import batches, checkpoints, console, distributed, labml_glue, sampling, stops, tokenizers
from .metrics import StepMetrics, learning_rate
from .optimizer import clip_grad_norm_


def init(c):
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
    if c.is_log_model_activations:
        hook_model_outputs(c.mode, c.model, 'model')


def step(c, batch, batch_idx: BatchIndex):
    """
    ### One training or validation step

    The same computation as labml_nn's `NLPAutoRegressionConfigs.step`, but the loss and
    accuracy stay on the device until a report is due, and the model's gradients are
    released (`set_to_none`) rather than zero-filled.
    """
    if c._metrics is None:
        c._metrics = StepMetrics()
    c.model.train(c.mode.is_train)
    data, target = batch[0].to(c.device), batch[1].to(c.device)
    if c.mode.is_train:
        # labml's global step counts tokens, of all the processes.
        tracker.add_global_step(data.numel() * distributed.world().size)

    with c.mode.update(is_log_activations=batch_idx.is_last and c.is_log_model_activations), \
            torch.autocast(c.device.type, dtype=c.dtype, enabled=c.dtype != torch.float32):
        # Validation runs the plain module: compiled, it would be another graph to compile
        # (without gradients) for a small share of the time.
        output, *_ = (c.train_model if c.mode.is_train else c.model)(data)
        loss = c.loss_func(output, target)
    c._metrics.add(tracker.get_global_step(), loss, output, target)

    if c.mode.is_train:
        c.grad_scaler.scale(loss).backward()
        # Clip the true gradients, not the scaled ones.
        c.grad_scaler.unscale_(c.optimizer)
        grad_norm = clip_grad_norm_(c.optimizer, c.model.parameters(), max_norm=c.grad_norm_clip)
        c._metrics.add_grad_norm(grad_norm)
        c.grad_scaler.step(c.optimizer)
        c.grad_scaler.update()
        if batch_idx.is_last and c.is_log_model_params_grads:
            tracker.add('model', c.model)
        c.optimizer.zero_grad(set_to_none=True)
        if batch_idx.is_last and c.valid_batches > 0 and c._epochs_done + 1 >= c.epochs:
            # The run's last validation, right after this epoch, is over the whole split.
            c.validator.set_data_loader(c.valid_loader)

    # Report every `log_interval` steps and at the end of each train or valid stretch.
    ends_stretch = batch_idx.idx + 1 >= (batch_idx.iteration + 1) * batch_idx.total // batch_idx.total_iterations
    if ends_stretch or (c.mode.is_train and c._metrics.steps >= c.log_interval):
        report(c)
    if c.mode.is_train:
        stop_or_save(c)


def stop_or_save(c):
    """
    Between two whole optimizer steps: stop when asked (Ctrl-C, SIGTERM), or add a checkpoint
    when `checkpoint_minutes` have passed since the last one. With several processes the
    ranks agree first (one tiny all-reduce), whichever of them got the signal or reads the
    clock, so that they all stop, or save, at the same step.
    """
    signum = c._stop.signum if c._stop is not None and c._stop.signum else 0
    due = c.is_save_models and c._checkpoint_timer is not None and c._checkpoint_timer.due()
    if distributed.world().is_distributed:
        signum, due = distributed.agree_max([signum, int(due)])
    if not (signum or due):
        return
    # Report (and check) the steps since the last report, here, where labml still names
    # them `loss.train` and `accuracy.train`.
    if c._metrics is not None:
        report(c)
    if signum:
        raise stops.TrainingInterrupted(signum)
    experiment.save_checkpoint()
    c._checkpoint_timer.restart()


def report(c):
    """Hand the metrics since the last report to labml's tracker (one device sync)."""
    metrics, c._metrics = c._metrics, None
    tracker.add(metrics.report(c.device, 'training' if c.mode.is_train else 'validation'))
    if c.mode.is_train:
        tracker.add('lr', learning_rate(c.optimizer))
    # Piped, each report is one line of the log ([console](console.html)).
    with console.report_line():
        tracker.save()


def sample(c):
    """Greedy continuation of the prompt, printed and tracked as `sampled` (by rank 0)."""
    if not distributed.world().is_main:
        return
    out = sampling.greedy_continuation(c.model, c.text, c.prompt, n_tokens=c.sample_tokens,
                                       seq_len=c.seq_len, separator=c.prompt_separator, device=c.device)
    tracker.add({'sampled': c.prompt + ''.join(out)})
    logger.log([(c.prompt, Text.subtle), (''.join(out), Text.value)])


def run(c):
    """
    labml's training loop, stopped at step granularity by Ctrl-C or SIGTERM: the step in
    progress finishes, a checkpoint is saved and the run ends ([stops](stops.html)).
    """
    n_params = sum(p.numel() for p in c.model.parameters())
    logger.log([('Model parameters: ', Text.key), (f'{n_params:,}', Text.value)])
    # The tokenizer goes with the run, for `generate`.
    tokenizers.save(c.text.tokenizer, labml_glue.run_path())
    with monit.section('Initialize'):
        c.init()
    _ = c.validator
    _ = c.trainer
    c._checkpoint_timer = checkpoints.Timer(c.checkpoint_minutes)
    with stops.StopRequests() as c._stop:
        # `iter` installs labml's own SIGINT handler; ours goes back on top for the loop,
        # and leaving the `with` restores what was there before either.
        loop = iter(c.training_loop)
        c._stop.install()
        try:
            for _ in _epochs(loop):
                # labml's loop has just saved the end of the last epoch
                c._checkpoint_timer.restart()
                c.run_step()
                c._epochs_done += 1
        except stops.TrainingInterrupted as e:
            labml_glue.close_training_loop()
            if c.is_save_models:
                checkpoints.save_once()
            saved = 'checkpoint saved' if c.is_save_models else 'no checkpoint (is_save_models=false)'
            logger.log(f'Stopped at step {tracker.get_global_step():,}; {saved}.', Text.danger)
            raise stops.interrupted(e.signum) from None
        finally:
            c._stop = None


def _epochs(loop):
    """Step labml's `TrainingLoop` without calling `iter` on it again."""
    while True:
        try:
            yield next(loop)
        except StopIteration:
            return


def validator(c) -> Trainer:
    """
    labml_helpers' validator. With `valid_batches=N`, every validation is N batches drawn at
    random from the split, instead of the stretch's share of it ([batches](batches.html));
    `step` hands it the whole split for the run's last validation.
    """
    random = c.valid_batches > 0
    return Trainer(name='Valid', mode=c.mode,
                   data_loader=batches.RandomBatches(c.valid_loader, c.valid_batches) if random else c.valid_loader,
                   inner_iterations=1 if random else c.inner_iterations,
                   state_modules=c.state_modules, is_track_time=c.is_track_time, step=c.step)
