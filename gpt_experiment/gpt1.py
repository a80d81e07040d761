r"""
# GPT-1 as the paper has it

[Radford et al. (2018)](https://cdn.openai.com/research-covers/language-unsupervised/language_understanding_paper.pdf)
differ from the labml recipe in a few places. Each is an option here, off by default, and
`configs/gpt1.yaml` turns them all on:

* **post-LayerNorm blocks** (`transformer.encoder_layer=post_ln`): the original transformer's
  $x \leftarrow \text{LN}(x + \text{attn}(x))$, $x \leftarrow \text{LN}(x + \text{ffn}(x))$,
  where labml_nn normalises *before* each sub-layer. A post-LN stack ends normalised already,
  so the GPT drops labml_nn's final LayerNorm for it (see [model](model.html));
* **learned positions of `seq_len` rows** (`transformer.src_embed=learned_pos`; labml_nn's
  table has 5,000 rows, 3.5M extra parameters at GPT-1's width, that the model never uses);
* **tied input and output embeddings** (`tie_embeddings=true`) and **dropout on the
  embeddings** (`embedding_dropout=0.1`), in [model](model.html);
* **weight decay on every weight matrix** (`weight_decay_params=matrices`): GPT-1 decays "all
  non bias or gain weights", which includes the token and position embeddings, where minGPT
  (`weight_decay_params=linear`, the default) decays only the `nn.Linear` weights (both rules
  are in [optimizer](optimizer.html));
* **a cosine decay to zero** (`optimizer.optimizer=AdamWarmupCosineToZero`): labml_nn's
  schedule stops at 10% of the maximum learning rate ([lr_schedule](lr_schedule.html)).
"""

import copy

import torch

from labml.configs import option
from labml_nn.transformers import TransformerConfigs
from labml_nn.transformers.models import TransformerLayer


class PostLNTransformerLayer(TransformerLayer):
    """
    ## Post-LayerNorm transformer layer

    The same parameters as labml_nn's (pre-LN) `TransformerLayer`, with the normalisation after
    each residual sum. It is an encoder layer only (no source attention).
    """

    def forward(self, *, x: torch.Tensor, mask: torch.Tensor, src: torch.Tensor = None,
                src_mask: torch.Tensor = None):
        assert src is None, 'the post-LN layer is a GPT (encoder) layer'
        # $x \leftarrow \text{LN}(x + \text{Dropout}(\text{attn}(x)))$
        x = self.norm_self_attn(x + self.dropout(self.self_attn(query=x, key=x, value=x, mask=mask)))
        # $x \leftarrow \text{LN}(x + \text{Dropout}(\text{ffn}(x)))$
        return self.norm_ff(x + self.dropout(self.feed_forward(x)))


@option(TransformerConfigs.encoder_layer, 'post_ln')
def _post_ln_encoder_layer(c: TransformerConfigs):
    return PostLNTransformerLayer(d_model=c.d_model, self_attn=c.encoder_attn, src_attn=None,
                                  feed_forward=copy.deepcopy(c.ffn.ffn), dropout_prob=c.dropout)

