r"""
# A nanoGPT-style reference, for the benchmarks

A stand-in for the model and optimizer of [nanoGPT](https://github.com/karpathy/nanoGPT)
(`model.py` and `train.py`), written here from their public sources so that the throughput
benchmark can time it beside this project's step without installing or vendoring anything.
It keeps every structural choice that costs or saves time:

* tensors are *batch first*, `[batch, seq, d_model]`;
* one `nn.Linear` makes the queries, keys and values of every head ($x W_{qkv}$, split after);
* attention is `F.scaled_dot_product_attention(..., is_causal=True)`;
* pre-LN blocks, $x + \text{attn}(\text{LN}(x))$ then $x + \text{MLP}(\text{LN}(x))$, with a GELU MLP
  four times as wide, and a final LayerNorm;
* learned token and position embeddings, the token table tied to the output head;
* `bias=False` in every linear layer and LayerNorm: `train.py`'s default, which the
  Shakespeare character config keeps;
* nanoGPT's initialisation, $\mathcal{N}(0, 0.02)$ with $0.02 / \sqrt{2 L}$ for the residual
  projections.

`configure_optimizer` is `GPT.configure_optimizers` on a CPU: `torch.optim.AdamW` with weight
decay on the parameters of two or more dimensions only, betas (0.9, 0.95), and the
multi-tensor (`foreach`) kernels. (On a CPU, PyTorch's own default for AdamW is the
one-tensor-at-a-time loop, which is slower; the multi-tensor reference is the stricter one.)
`train_step` is `train.py`'s inner loop without gradient accumulation: the learning rate set
on every group, forward with the loss, backward, `clip_grad_norm_(1.0)`, step, and
`zero_grad(set_to_none=True)`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool):
        super().__init__()
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_heads, self.dropout = n_heads, dropout

    def forward(self, x):
        B, T, C = x.shape
        # `[B, T, 3C]` split into three `[B, heads, T, d_k]` views
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        # heads side by side again
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(d_model, 4 * d_model, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, bias)
        self.ln_2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, *, n_vocab: int, seq_len: int, n_layers: int, d_model: int, n_heads: int,
                 dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.wte = nn.Embedding(n_vocab, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList([Block(d_model, n_heads, dropout, bias) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.lm_head = nn.Linear(d_model, n_vocab, bias=False)
        # weight tying: one `[n_vocab, d_model]` matrix embeds and un-embeds
        self.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets):
        # `idx` and `targets` are `[batch, seq]`
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def configure_optimizer(model: GPT, *, learning_rate: float = 1e-3, weight_decay: float = 0.1):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), foreach=True)


def train_step(model: GPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float):
    """One step of nanoGPT's loop on `[batch, seq]` inputs and targets."""
    for group in optimizer.param_groups:
        group['lr'] = lr
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss
