"""
# Optimizer

GPT trains with Adam, a linear warm-up and a cosine decay of the learning rate
(labml_nn's `AdamWarmupCosineDecay`; the schedule is explained in
[lr_schedule](lr_schedule.html)), and *decoupled* weight decay applied the minGPT way: only
the weight matrices of `nn.Linear` layers decay. Biases, LayerNorm gains, embeddings and
positional encodings do not, since pulling them towards zero only hurts.
"""

import math
from typing import Callable, Dict, List

import torch
from torch import nn

from labml.configs import option
from labml_nn.optimizers.adam_warmup_cosine_decay import AdamWarmupCosineDecay
from labml_nn.optimizers.configs import OptimizerConfigs


def linear_weights(model: nn.Module) -> List[str]:
    """minGPT's decay rule: only the weights of `nn.Linear` layers decay."""
    return sorted(f'{mn}.{pn}' if mn else pn
                  for mn, m in model.named_modules() if isinstance(m, nn.Linear)
                  for pn, _ in m.named_parameters(recurse=False) if pn == 'weight')


def matrix_weights(model: nn.Module) -> List[str]:
    """
    GPT-1's decay rule: every weight but biases and gains, that is every parameter with two or
    more dimensions (linear weights, token embeddings, the learned position table). A tied
    embedding is one parameter and is listed once.
    """
    return sorted(n for n, p in model.named_parameters() if p.dim() >= 2)


# A decay rule: the names of the parameters of a model that decay.
DecayRule = Callable[[nn.Module], List[str]]


def decay_groups(model: nn.Module, weight_decay: float, rule: DecayRule = linear_weights) -> List[Dict]:
    """Two parameter groups: the parameters `rule` picks, with `weight_decay`; the rest with none."""
    params = dict(model.named_parameters())
    decay = set(rule(model)) & set(params)
    return [
        {'params': [params[n] for n in sorted(decay)], 'weight_decay': weight_decay},
        {'params': [params[n] for n in sorted(set(params) - decay)], 'weight_decay': 0.0},
    ]


# What GPT's optimizer sets in labml_nn's `OptimizerConfigs`, over that class's own defaults:
# labml_nn's `AdamWarmupCosineDecay` on PyTorch's fused Adam kernel (below), the same update in one
# pass per tensor (`optimizer.optimizer=AdamWarmupCosineDecay` is the stock one); GPT's betas
# and epsilon; decoupled weight decay, $\theta \leftarrow \theta - \alpha \lambda \theta$, not
# $g \leftarrow g + \lambda \theta$.
GPT_OPTIMIZER = {'optimizer': 'FusedAdamWarmupCosineDecay', 'betas': (0.9, 0.95), 'eps': 1e-8, 'weight_decouple': True}


def gpt_optimizer_configs(parameters: List[Dict], *, weight_decay: float, learning_rate: float, d_model: int,
                          warmup: int, total_steps: int) -> OptimizerConfigs:
    """
    labml_nn's `OptimizerConfigs` set up for GPT, on the parameter groups of `decay_groups`.
    It stays a configs object, so every field can still be overridden from the command line
    (`optimizer.learning_rate=1e-3`).
    """
    conf = OptimizerConfigs()
    conf.parameters = parameters
    for key, value in GPT_OPTIMIZER.items():
        setattr(conf, key, value)
    conf.learning_rate = learning_rate
    # Only the `Noam` option reads this, but keep it right for whoever switches to it.
    conf.d_model = d_model
    # The group values above win; this is the default for groups that do not set one.
    conf.weight_decay = weight_decay
    # The schedule's length, in optimizer steps ([lr_schedule](lr_schedule.html))
    conf.warmup = warmup
    conf.total_steps = total_steps
    return conf


def optimizer_option(cls):
    """
    Register an `AdamWarmupCosineDecay` subclass as the `optimizer.optimizer` option of its
    name, built from labml_nn's `OptimizerConfigs` as labml_nn builds its own.
    """
    def build(c: OptimizerConfigs):
        return cls(c.parameters, lr=c.learning_rate, betas=c.betas, eps=c.eps,
                   weight_decay=c.weight_decay_obj, optimized_update=c.optimized_adam_update,
                   amsgrad=c.amsgrad, warmup=c.warmup, total_steps=c.total_steps)
    option(OptimizerConfigs.optimizer, cls.__name__)(build)
    return cls


@optimizer_option
class ForeachAdamWarmupCosineDecay(AdamWarmupCosineDecay):
    r"""
    ## The same optimizer on multi-tensor kernels

    labml_nn's `AdamWarmupCosineDecay` updates parameters one at a time in Python: about ten
    small tensor operations per parameter per step. This class keeps its update rule, its
    learning-rate schedule (`get_lr`) and its state (`step`, `exp_avg`, `exp_avg_sq` per
    parameter, so checkpoints of either load into the other), and applies each operation to
    all the parameters of a group at once with PyTorch's `_foreach_` kernels:

    \begin{align}
    \theta &\leftarrow \theta (1 - \alpha_{\max} \lambda) && \text{decoupled decay, as labml_nn: with the group's maximum lr} \\
    m &\leftarrow \beta_1 m + (1 - \beta_1) g \\
    v &\leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
    \theta &\leftarrow \theta - \alpha_t \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t} \frac{m}{\sqrt{v} + \hat{\epsilon}}
    \end{align}

    Select it with `optimizer.optimizer=ForeachAdamWarmupCosineDecay`. AMSGrad, and groups
    whose parameters are at different steps, fall back to the one-at-a-time path.
    """

    # What `clip_grad_norm_` asks the next `step` to divide the gradients by (a tensor), or `None`
    _grad_divisor = None

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        r"""
        Gradient clipping as `torch.nn.utils.clip_grad_norm_` does it: when the norm $\|g\|$ of
        all the gradients together exceeds `max_norm`, every gradient is scaled by
        $\text{max_norm} / (\|g\| + 10^{-6})$. Here the norm is computed now and the scaling is
        left to `step`: the fused kernel divides each gradient as it reads it, which saves a
        pass over them. Returns the norm before clipping.
        """
        grads = [p.grad for group in self.param_groups for p in group['params'] if p.grad is not None]
        if len({(g.device, g.dtype) for g in grads}) == 1:
            # `torch.nn.utils.get_total_norm` without its grouping by device and dtype, which
            # costs a quarter of the norms themselves on the small benchmark shape
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        self._grad_divisor = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        return norm

    def zero_grad(self, set_to_none: bool = True):
        self._grad_divisor = None
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        # What `Optimizer.zero_grad` does, without its per-call bookkeeping (0.2 ms a step on
        # the small benchmark shape)
        for group in self.param_groups:
            for p in group['params']:
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        divisor, self._grad_divisor = self._grad_divisor, None
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            states = [self.state[p] for p in params]
            for p, s in zip(params, states):
                if not s:
                    self.init_state(s, group, p)
            if not params:
                continue
            if group['amsgrad'] or len({s['step'] for s in states}) > 1:
                if divisor is not None:
                    torch._foreach_div_([p.grad for p in params], divisor)
                for p, s in zip(params, states):
                    self.step_param(s, group, p.grad, p)
                continue
            self._foreach_step(group, params, states, divisor)
        return loss

    def _foreach_step(self, group, params, states, divisor=None):
        grads = [p.grad for p in params]
        if divisor is not None:
            torch._foreach_div_(grads, divisor)
        wd = self.weight_decay
        if group['weight_decay'] != 0:
            if wd.weight_decouple:
                decay = group['weight_decay'] if wd.absolute else group['lr'] * group['weight_decay']
                torch._foreach_mul_(params, 1.0 - decay)
            else:
                grads = torch._foreach_add(grads, params, alpha=group['weight_decay'])

        beta1, beta2 = group['betas']
        m = [s['exp_avg'] for s in states]
        v = [s['exp_avg_sq'] for s in states]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)

        for s in states:
            s['step'] += 1
        t = states[0]['step']
        lr = self.get_lr(states[0], group)
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        denominator = torch._foreach_sqrt(v)
        if self.optimized_update:
            torch._foreach_add_(denominator, group['eps'])
            step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        else:
            torch._foreach_div_(denominator, math.sqrt(bias_correction2))
            torch._foreach_add_(denominator, group['eps'])
            step_size = lr / bias_correction1
        torch._foreach_addcdiv_(params, m, denominator, value=-step_size)


@optimizer_option
class FusedAdamWarmupCosineDecay(ForeachAdamWarmupCosineDecay):
    r"""
    ## The same optimizer on PyTorch's fused Adam kernels

    `torch._fused_adam_` (the kernel behind `torch.optim.Adam(fused=True)`, on CPU and CUDA)
    does the moment updates and the parameter update of every tensor of a group in one call,
    one pass over memory per tensor instead of the foreach path's seven. Two differences from
    labml_nn's rule are folded into its arguments:

    * the kernel divides by $\sqrt{v / (1 - \beta_2^t)} + \epsilon$; labml_nn's
      `optimized_update` divides by $\sqrt{v} + \epsilon$ and multiplies the step size by
      $\sqrt{1 - \beta_2^t}$. The two are equal when the kernel gets
      $\epsilon / \sqrt{1 - \beta_2^t}$;
    * the AdamW kernel `torch._fused_adamw_` decays by $1 - \alpha_t \lambda'$ with the
      scheduled learning rate $\alpha_t$; labml_nn decays by $1 - \alpha_{\max} \lambda$ with
      the group's maximum. The two are equal when the kernel gets
      $\lambda' = \alpha_{\max} \lambda / \alpha_t$, so the decay costs no pass of its own
      (at $\alpha_t = 0$ it stays a `_foreach_mul_` before the Adam kernel).

    The kernel also divides each gradient by `grad_scale` as it reads it, which is where
    `clip_grad_norm_`'s scaling goes; `p.grad` itself keeps the unclipped gradient.

    Devices the kernel does not support use the foreach path.
    """

    def _foreach_step(self, group, params, states, divisor=None):
        if params[0].device.type not in _fused_devices():
            return super()._foreach_step(group, params, states, divisor)
        for s in states:
            s['step'] += 1
        t = states[0]['step']
        lr = self.get_lr(states[0], group)
        beta1, beta2 = group['betas']
        eps = group['eps']
        if self.optimized_update:
            eps = eps / math.sqrt(1 - beta2 ** t)

        kernel, kernel_decay = torch._fused_adam_, 0.0
        if group['weight_decay'] != 0:
            wd = self.weight_decay
            if not wd.weight_decouple:
                # $g \leftarrow g + \lambda \theta$, which the Adam kernel does itself
                kernel_decay = group['weight_decay']
            else:
                decay = group['weight_decay'] if wd.absolute else group['lr'] * group['weight_decay']
                if lr > 0:
                    kernel, kernel_decay = torch._fused_adamw_, decay / lr
                else:
                    torch._foreach_mul_(params, 1.0 - decay)

        # The kernel reads each tensor's step from a tensor; one shared tensor serves them all.
        # `torch.full` fills it on the device: `torch.tensor(t, device=...)` would copy it from
        # the host and wait for the GPU to finish its queue, once per group per step.
        step = torch.full((), float(t), device=params[0].device)
        kernel(params, [p.grad for p in params], [s['exp_avg'] for s in states], [s['exp_avg_sq'] for s in states],
               [], [step] * len(params), lr=lr, beta1=beta1, beta2=beta2, weight_decay=kernel_decay, eps=eps,
               amsgrad=False, maximize=False, grad_scale=divisor)


def _fused_devices():
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    return _get_fused_kernels_supported_devices()


def clip_grad_norm_(optimizer: torch.optim.Optimizer, parameters, max_norm: float) -> torch.Tensor:
    """
    Clip the gradients of `parameters` to a total norm of `max_norm`: inside the next step with
    the optimizers above, with `torch.nn.utils.clip_grad_norm_` for any other.
    """
    if isinstance(optimizer, ForeachAdamWarmupCosineDecay):
        return optimizer.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
