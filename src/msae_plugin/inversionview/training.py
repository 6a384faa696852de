"""Training an InversionView decoder on (activation, input) pairs generated on the fly.

Each batch: draw one site (hook) at random, take a batch of task inputs, run the probed model
only up to that hook's block, pick one random position per input (non-special tokens; with
probability ``p_bos`` the BOS position, so the decoder also learns the uninformative
condition), and train the decoder to generate the whole input from that activation
(next-token loss). Fresh pairs every step, as the paper regenerates its data every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from msae_plugin.inversionview.decoder import InversionViewDecoder
from msae_plugin.inversionview.preimage import check_hook, hook_block


@dataclass
class PairBatch:
    tokens: torch.Tensor  # [batch, seq] the inputs (BOS ... EOS, padded)
    acts: torch.Tensor  # [batch, d_act] one activation per input
    sites: torch.Tensor  # [batch] index into the hook list
    positions: torch.Tensor  # [batch] where each activation was taken


class PairGenerator:
    """Fresh (activation, input) pairs from ``probed`` at random hooks and positions."""

    def __init__(
        self,
        probed,
        hooks: Sequence[str],
        sample_inputs: Callable[[int, torch.Generator], torch.Tensor],
        special_ids: Sequence[int],
        bos_id: int,
        p_bos: float = 0.01,
        seed: int = 0,
    ) -> None:
        if not hooks:
            raise ValueError("give at least one hook to train the decoder on")
        for h in hooks:
            check_hook(probed, h)
        self.probed = probed
        self.hooks = list(hooks)
        self.sample_inputs = sample_inputs
        self.special = torch.tensor(sorted(set(special_ids)))
        self.bos_id = bos_id
        self.p_bos = p_bos
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, batch_size: int) -> PairBatch:
        g = self.generator
        site = int(torch.randint(len(self.hooks), (1,), generator=g))
        hook = self.hooks[site]
        tokens = self.sample_inputs(batch_size, g)
        block = hook_block(hook)
        _, cache = self.probed.run_with_cache(
            tokens, names_filter=[hook], stop_at_layer=None if block is None else block + 1
        )
        acts = cache[hook]
        acts = acts.flatten(2) if acts.dim() == 4 else acts
        ordinary = ~torch.isin(tokens, self.special)
        weights = ordinary.float() + 1e-9 * (~ordinary).float()
        pos = torch.multinomial(weights, 1, generator=g).squeeze(1)
        use_bos = torch.rand(batch_size, generator=g) < self.p_bos
        bos_pos = (tokens == self.bos_id).float().argmax(dim=1)
        pos = torch.where(use_bos, bos_pos, pos)
        picked = acts[torch.arange(batch_size), pos]
        return PairBatch(tokens, picked, torch.full((batch_size,), site), pos)


def train_decoder(
    decoder: InversionViewDecoder,
    pairs: PairGenerator,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    progress: bool = True,
    log_every: int = 50,
) -> list[float]:
    """AdamW on the next-token loss; returns the loss every ``log_every`` steps."""
    if decoder.cfg.n_sites != len(pairs.hooks):
        raise ValueError(
            f"decoder has n_sites={decoder.cfg.n_sites} but {len(pairs.hooks)} hooks were given"
        )
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    decoder.train()
    losses = []
    bar = tqdm(range(steps), desc="InversionView decoder", disable=not progress)
    for step in bar:
        b = pairs(batch_size)
        loss = decoder.loss(b.tokens, b.acts, b.sites)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    decoder.eval()
    return losses
