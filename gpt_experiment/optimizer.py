r"""
# Optimizer and learning-rate schedule

GPT trains with Adam, a linear warm-up and a cosine decay of the learning rate: labml_nn's
`AdamWarmupCosineDecay`. Here it is PyTorch's own `Adam` (its fused kernel where the device has
one, `foreach` elsewhere), with labml_nn's update rule folded into its arguments, and the
schedule is a function of the tokens trained that the [trainer](trainer.html) applies before
every step.

Weight decay is *decoupled* and applied the minGPT way: only the weight matrices of
`nn.Linear` layers decay. Biases, LayerNorm gains, embeddings and positional encodings do not,
since pulling them towards zero only hurts. GPT-1 decays every matrix instead
(`weight_decay_params=matrices`).
"""

import math
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from labml.configs import meta_config, option
from labml_nn.optimizers.configs import OptimizerConfigs

from . import labml_glue


# ## Which parameters decay

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


# ## The learning-rate schedule

class WarmupCosine:
    r"""
    The learning rate after $\tau$ tokens of training: a linear warm-up over the first $W$
    tokens, then a cosine decay to `floor` times the peak $\alpha$ at the last token $T$:

    $$\alpha_\tau = 10^{-8} + \alpha \frac{\tau}{W} \quad (\tau < W), \qquad
      \alpha_\tau = \alpha \max\Big(f, \frac{1}{2}\big(1 + \cos \pi c_\tau\big)\Big) \quad (\tau \ge W),
      \qquad c_\tau = \min\Big(1, \frac{\tau - W}{T - W}\Big)$$

    This is labml_nn's `AdamWarmupCosineDecay.get_lr`, counted in tokens where labml_nn counts
    optimizer steps (the recipe gives its warm-up in tokens, `warmup_steps = 128 * 128 * 20`,
    and its length in epochs), and clamped at its end, where labml_nn's cosine would turn back
    up. labml_nn floors it at $f = 0.1$; GPT-1's `AdamWarmupCosineToZero` at $f = 0$.

    **Resumed with another length** (more `epochs`, another `seq_len`), the rest of the cosine
    is stretched from where the run stands: from $\tau_0$ on,
    $c_\tau = c_0 + (1 - c_0) \frac{\tau - \tau_0}{T - \tau_0}$, so the learning rate goes on
    from the value it had and still ends at the floor at the new last token. A new batch size
    changes nothing here: tokens are tokens.
    """

    def __init__(self, peak: float, warmup: int, total: int, floor: float):
        self.peak = peak
        self.warmup = warmup
        self.total = total
        self.floor = floor
        # `(tau_0, c_0)` where a resumed run stretched the cosine, or `None`
        self.anchor = None

    def progress(self, tokens: int) -> float:
        """$c_\\tau$, the share of the cosine done, in $[0, 1]$."""
        if self.anchor is not None and tokens >= self.anchor[0]:
            start, done = self.anchor
            return min(1.0, done + (1 - done) * (tokens - start) / max(1, self.total - start))
        return min(1.0, max(0.0, (tokens - self.warmup) / max(1, self.total - self.warmup)))

    def __call__(self, tokens: int) -> float:
        if tokens < self.warmup and self.anchor is None:
            # linear warm-up, from labml_nn's $10^{-8}$ rather than zero
            return 1e-8 + tokens * self.peak / self.warmup
        return self.peak * max(self.floor, 0.5 * (1.0 + math.cos(math.pi * self.progress(tokens))))

    def state_dict(self) -> Dict:
        return {'warmup': self.warmup, 'total': self.total, 'anchor': self.anchor}

    def load_state_dict(self, state: Dict, tokens: int):
        """The schedule of the run resumed at `tokens`, stretched when this run's length is another."""
        if state['total'] == self.total:
            self.anchor = state['anchor']
            return
        was = WarmupCosine(self.peak, state['warmup'], state['total'], self.floor)
        was.anchor = state['anchor']
        if tokens >= was.warmup or was.anchor is not None:
            self.anchor = (tokens, was.progress(tokens))


def total_norm(grads: List[torch.Tensor]) -> torch.Tensor:
    r"""
    $\|g\|$, the norm of all the gradients together, as `torch.nn.utils.get_total_norm`
    computes it: the norm of each (one `foreach` kernel), then the norm of those. PyTorch's
    function first groups the tensors by device and dtype, which at small shapes costs a quarter
    of the norms themselves; gradients of one device and dtype need no grouping.
    """
    if len({(g.device, g.dtype) for g in grads}) != 1:
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


# ## Adam

class AdamWarmupCosineDecay(torch.optim.Adam):
    r"""
    PyTorch's Adam (fused where the device has the kernel), making labml_nn's
    `AdamWarmupCosineDecay` update. The schedule ([`WarmupCosine`](#WarmupCosine)) gives the
    learning rate $\alpha_t$ of each step, and `set_lr` folds labml_nn's two differences from
    PyTorch's rule into the arguments of the step:

    * labml_nn decays by the *peak* rate, $\theta \leftarrow \theta (1 - \alpha \lambda)$;
      PyTorch's AdamW by the scheduled one, $\theta \leftarrow \theta (1 - \alpha_t \lambda')$.
      They are equal when $\lambda' = \alpha \lambda / \alpha_t$ (at $\alpha_t = 0$ the decay is
      done apart);
    * labml_nn divides by $\sqrt{v} + \epsilon$ and multiplies the step by
      $\sqrt{1 - \beta_2^t}$; PyTorch divides by $\sqrt{v / (1 - \beta_2^t)} + \epsilon'$. They
      are equal when $\epsilon' = \epsilon / \sqrt{1 - \beta_2^t}$.

    `decouple=False` is labml_nn's L2 decay, $g \leftarrow g + \lambda \theta$, which PyTorch's
    Adam does itself; `absolute=True` decays by $\lambda$ rather than $\alpha \lambda$.
    """

    # Where the cosine ends, as a share of the peak (labml_nn's)
    lr_floor = 0.1

    def __init__(self, params, *, lr: float, betas, eps: float, decouple: bool = True, absolute: bool = False,
                 optimized_update: bool = True, amsgrad: bool = False):
        params = list(params)
        device = next((p.device for g in params for p in (g['params'] if isinstance(g, dict) else [g])), None)
        # PyTorch's fused kernels run on CPUs and CUDA GPUs; elsewhere its `foreach` path
        super().__init__(params, lr=lr, betas=betas, eps=eps, amsgrad=amsgrad, decoupled_weight_decay=decouple,
                         fused=device is not None and device.type in ('cpu', 'cuda'))
        for group in self.param_groups:
            # labml_nn's values, from which each step's arguments are made
            group['peak_lr'], group['decay'], group['base_eps'] = lr, group['weight_decay'], eps
        self.absolute = absolute
        self.optimized_update = optimized_update
        # Every parameter, once, for the per-step clipping and zeroing below
        self._params = [p for group in self.param_groups for p in group['params']]
        # Optimizer steps taken, for $\beta_2^t$ (PyTorch keeps its own, per parameter)
        self.steps = 0

    def set_lr(self, lr: float):
        """Set up the next step with learning rate `lr`, labml_nn's rule folded in (above)."""
        t = self.steps + 1
        for group in self.param_groups:
            group['lr'] = lr
            decay = group['decay'] * (1.0 if self.absolute else group['peak_lr'])
            if group['decoupled_weight_decay']:
                # $\lambda' = \alpha \lambda / \alpha_t$; at $\alpha_t = 0$ decay apart, below
                group['weight_decay'] = decay / lr if lr > 0 else 0.0
                group['_decay_apart'] = decay if lr == 0 else 0.0
            eps = group['base_eps']
            group['eps'] = eps / math.sqrt(1 - group['betas'][1] ** t) if self.optimized_update else eps

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        r"""
        Gradient clipping as `torch.nn.utils.clip_grad_norm_` does it: when the norm $\|g\|$ of
        all the gradients together exceeds `max_norm`, every gradient is scaled by
        $\text{max_norm} / (\|g\| + 10^{-6})$. With the fused kernel the scaling is left to the
        step: the kernel divides each gradient by `grad_scale` as it reads it (the hook
        PyTorch's gradient scaler uses), which saves a pass over the gradients. Returns the
        norm before clipping.
        """
        norm = total_norm([p.grad for p in self._params if p.grad is not None])
        if self.param_groups[0]['fused']:
            self.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        else:
            torch.nn.utils.clip_grads_with_norm_(self._params, max_norm, norm, foreach=True)
        return norm

    def zero_grad(self, set_to_none: bool = True):
        # PyTorch's walks the groups through its hooks and profiler records on every step
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for p in self._params:
            p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group.get('_decay_apart'):
                for p in group['params']:
                    p.mul_(1 - group['_decay_apart'])
        self.steps += 1
        try:
            return super().step(closure)
        finally:
            # the clipping is this step's only
            self.grad_scale = None

    def load_state_dict(self, state_dict):
        # The moments and step counts come from the checkpoint; the group values (learning
        # rate, decay, betas) are this run's configs, which may have been changed on resume.
        given = [{k: v for k, v in group.items() if k != 'params'} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, values in zip(self.param_groups, given):
            group.update(values)
        counts = [int(s['step']) for s in self.state.values() if 'step' in s]
        self.steps = max(counts, default=0)


class AdamWarmupCosineToZero(AdamWarmupCosineDecay):
    """GPT-1's schedule: the same Adam, with the cosine going all the way down to zero."""
    lr_floor = 0.0


class Muon:
    r"""
    <a id="Muon"></a>
    ## Muon on the hidden matrices, Adam on the rest

    [Muon](https://kellerjordan.github.io/posts/muon/) updates a weight matrix with its
    momentum made orthogonal: Newton-Schulz iterations take the momentum $M = U S V^\top$ to
    about $U V^\top$, so that every direction of the update moves as far. It is meant for the
    hidden matrices of a network (here the attention's and the feed-forward's weights inside
    the layers); the embeddings, the generator, the gains and the biases keep Adam
    (modded-nanogpt's split). Both are PyTorch's own: `torch.optim.Muon`, with its learning
    rate matched to AdamW's update size (`adjust_lr_fn='match_rms_adamw'`) and `muon_lr_scale`
    times Adam's, and [`AdamWarmupCosineDecay`](#AdamWarmupCosineDecay) above. The schedule
    scales both.
    """

    lr_floor = AdamWarmupCosineDecay.lr_floor

    def __init__(self, groups: List[Dict], hidden: List[nn.Parameter], *, lr: float, lr_scale: float, **adam):
        hidden_ids = {id(p) for p in hidden}
        rest = [{**g, 'params': [p for p in g['params'] if id(p) not in hidden_ids]} for g in groups]
        self.adam = AdamWarmupCosineDecay([g for g in rest if g['params']], lr=lr, **adam)
        # the hidden matrices decay as their group says (the `linear` and `matrices` rules both decay them)
        decay = max((g['weight_decay'] for g in groups if any(id(p) in hidden_ids for p in g['params'])), default=0.0)
        self.muon = torch.optim.Muon(hidden, lr=lr * lr_scale, weight_decay=decay, momentum=0.95, nesterov=True,
                                     adjust_lr_fn='match_rms_adamw')
        self.lr_scale = lr_scale
        self.muon_params = list(hidden)

    @property
    def param_groups(self) -> List[Dict]:
        # Adam's first: the learning rate the trainer reports is the schedule's
        return self.adam.param_groups + self.muon.param_groups

    @property
    def state(self) -> Dict:
        return {**self.adam.state, **self.muon.state}

    def set_lr(self, lr: float):
        self.adam.set_lr(lr)
        for group in self.muon.param_groups:
            group['lr'] = lr * self.lr_scale

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        params = self.adam._params + self.muon_params
        norm = total_norm([p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        return norm

    def step(self, closure=None):
        self.adam.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True):
        self.adam.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict:
        return {'adam': self.adam.state_dict(), 'muon': self.muon.state_dict()}

    def load_state_dict(self, state: Dict):
        # Muon's group values, like Adam's, are this run's configs; only its momenta come back.
        given = [{k: v for k, v in group.items() if k != 'params'} for group in self.muon.param_groups]
        self.adam.load_state_dict(state['adam'])
        self.muon.load_state_dict(state['muon'])
        for group, values in zip(self.muon.param_groups, given):
            group.update(values)


# ## Configurations

class GPTOptimizerConfigs(OptimizerConfigs):
    """
    labml_nn's `OptimizerConfigs`, offering the optimizers above. Every field can still be
    overridden from the command line (`optimizer.learning_rate=1e-3`, `optimizer.betas=...`).
    """
    # The optimizer ([below](#options)); the learning-rate schedule comes with it
    optimizer: torch.optim.Optimizer = 'AdamWarmupCosineDecay'
    # With `Muon`: its peak learning rate, as a multiple of `learning_rate` (Adam's)
    muon_lr_scale: float = 2.0
    # The hidden matrices, which `Muon` updates (set by the GPT's configs)
    hidden_matrices: Any = []

    def __init__(self):
        super().__init__()
        # labml_nn's other optimizers keep their own schedules, which the trainer's would fight.
        for name in list(labml_glue.configs_registry(self)[2]['optimizer']):
            if name not in OPTIMIZERS:
                labml_glue.withdraw_option(self, 'optimizer', name)


# labml records what it computes for a key in the run's configs; not a list of tensors
meta_config(GPTOptimizerConfigs.hidden_matrices)

# What GPT's optimizer sets in labml_nn's `OptimizerConfigs`, over that class's own defaults:
# GPT's betas and epsilon, and decoupled weight decay.
GPT_OPTIMIZER = {'betas': (0.9, 0.95), 'eps': 1e-8, 'weight_decouple': True}
OPTIMIZERS = {'AdamWarmupCosineDecay': AdamWarmupCosineDecay, 'AdamWarmupCosineToZero': AdamWarmupCosineToZero,
              'Muon': Muon}


def gpt_optimizer_configs(parameters: List[Dict], *, weight_decay: float, learning_rate: float,
                          d_model: int, hidden_matrices: List[nn.Parameter]) -> GPTOptimizerConfigs:
    """The optimizer configs set up for GPT, on the parameter groups of `decay_groups`."""
    conf = GPTOptimizerConfigs()
    conf.parameters = parameters
    conf.hidden_matrices = hidden_matrices
    for key, value in GPT_OPTIMIZER.items():
        setattr(conf, key, value)
    conf.learning_rate = learning_rate
    # Only labml_nn's `Noam` reads it, but keep it right.
    conf.d_model = d_model
    # The group values above win; this is the default for groups that do not set one.
    conf.weight_decay = weight_decay
    return conf


def _adam(cls: type) -> Callable[[GPTOptimizerConfigs], torch.optim.Optimizer]:
    def build(c: GPTOptimizerConfigs):
        return cls(c.parameters, lr=c.learning_rate, betas=c.betas, eps=c.eps, decouple=c.weight_decouple,
                   absolute=c.weight_decay_absolute, optimized_update=c.optimized_adam_update, amsgrad=c.amsgrad)
    return build


for _name in ('AdamWarmupCosineDecay', 'AdamWarmupCosineToZero'):
    option(GPTOptimizerConfigs.optimizer, _name)(_adam(OPTIMIZERS[_name]))


@option(GPTOptimizerConfigs.optimizer, 'Muon')
def _muon(c: GPTOptimizerConfigs):
    return Muon(c.parameters, c.hidden_matrices, lr=c.learning_rate, lr_scale=c.muon_lr_scale, betas=c.betas,
                eps=c.eps, decouple=c.weight_decouple, absolute=c.weight_decay_absolute,
                optimized_update=c.optimized_adam_update, amsgrad=c.amsgrad)
