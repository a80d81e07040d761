"""
# Training metrics, summed on the device

labml_nn's trainer hands every step's loss to the tracker as a Python number, which makes each
step wait for the device to finish. Here the loss and the accuracy of each step are *added up
on the device*, and handed to labml's tracker every `log_interval` steps and at the end of each
train or valid stretch: one wait per report instead of one per step.

The non-finite-loss check is made at the report too: a NaN or an infinity in any step makes the
sum non-finite. Every checkpoint is written after a report (labml saves between epochs, which
end with one; Ctrl-C reports before saving), so a bad step stops the run at most `log_interval`
steps later, before anything it spoiled is saved.

Training reports also carry the numbers people watch as a run trains, none of which waits for
the device at a step:

* `lr`, the learning rate of the last step, which the optimizer computes in Python;
* `grad_norm`, the total gradient norm before clipping, averaged over the steps of the report
  (summed on the device like the loss);
* `tokens_per_second`, the tokens of the report's steps over the wall time from the start of its
  first step to the report (read after the sync, so the device has finished them).
"""

import math
import time
from typing import Dict, List, Tuple

import torch

from . import distributed


class LossNotFinite(Exception):
    """Raised at the report that finds a NaN or infinite loss; nothing is saved after it."""


class StepMetrics:
    """The loss, correct predictions, predictions and steps since the last report."""

    def __init__(self):
        self.loss_sum = 0.
        self.correct = 0
        self.count = 0
        self.steps = 0
        # `(global step, loss on the device)` of each step, to name the first bad one
        self.recent: List[Tuple[int, torch.Tensor]] = []
        # Training steps: the sum of their gradient norms, and how many there were
        self.grad_norm_sum = 0.
        self.optimizer_steps = 0
        # Made at the start of the first step
        self.started = time.perf_counter()

    @torch.no_grad()
    def add(self, step: int, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor):
        """Add one step's loss and accuracy; nothing here waits for the device."""
        loss = loss.detach()
        self.recent.append((step, loss))
        self.loss_sum = self.loss_sum + loss.float()
        # The predicted token is the most likely one
        self.correct = self.correct + (output.argmax(dim=-1) == target).sum()
        self.count += target.numel()
        self.steps += 1

    @torch.no_grad()
    def add_grad_norm(self, norm: torch.Tensor):
        """Add a training step's gradient norm before clipping (a tensor on the device)."""
        self.grad_norm_sum = self.grad_norm_sum + norm.detach().float()
        self.optimizer_steps += 1

    def report(self, device: torch.device, split: str) -> Dict[str, float]:
        """
        The mean loss and the accuracy for labml's tracker (`loss.`, `accuracy.`, which labml
        suffixes with the mode: `loss.train`, `loss.valid`), and after training steps
        `grad_norm` and `tokens_per_second`. One device sync; with several processes, the sums
        of all of them (the gradient norms are the same on every rank, and so is their mean).
        """
        sums = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device)
                            for v in (self.loss_sum, self.correct, self.count, self.steps, self.grad_norm_sum)])
        loss, correct, count, steps, grad_norm_sum = distributed.all_reduce_sum(sums).tolist()
        seconds = time.perf_counter() - self.started
        if not math.isfinite(loss):
            # The first step whose own loss is not finite (or the last, if none is alone)
            bad = next((s for s, v in self.recent if not torch.isfinite(v)), self.recent[-1][0])
            raise LossNotFinite(f'{split} loss is not finite at step {bad:,} (tokens)')
        values = {'loss.': loss / steps, 'accuracy.': correct / count}
        if self.optimizer_steps:
            # every prediction is a token trained on, in all the processes
            values.update(grad_norm=grad_norm_sum / steps, tokens_per_second=count / seconds)
        return values


def learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """
    The learning rate of the optimizer's last step, in its first parameter group. labml_nn's
    optimizers compute it from the step count (`get_lr`, warm-up and decay included); others
    keep it in the group.
    """
    group = optimizer.param_groups[0]
    state = optimizer.state.get(group['params'][0]) if group['params'] else None
    if hasattr(optimizer, 'get_lr') and state:
        return float(optimizer.get_lr(state, group))
    return float(group['lr'])
