"""Effect of each latent on the zero-shot class logits.

Definition (first order): the change of each class logit when the latent's decoder vector, at
the latent's mean activation when active, is added to the SAE's hook at every token,
``Δ_c(j) = a_j · Σ_t Ḡ_c[t] · D_j`` with ``D_j = decode(e_j) − decode(0)`` (the latent's vector in
the hook's own space, de-standardisation included) and ``Ḡ_c`` the gradient of class logit c with
respect to the hook activation, averaged over a sample of images. Why first order: one backward
pass per class gives every latent's effect at once (d_sae forward passes would not fit the build
budget); for the pooled ``hook_image_embed`` the tests compare it with the exact change of the
logits for a small step.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def decoder_vectors(sae: Any, chunk: int = 1024) -> torch.Tensor:
    """``[d_sae, d_in]``: ``decode(e_j) − decode(0)`` for every latent (any SAELens SAE)."""
    d_sae = sae.cfg.d_sae
    zero = sae.decode(torch.zeros(1, d_sae, device=sae.device, dtype=sae.dtype)).float()
    out = []
    for i in range(0, d_sae, chunk):
        eye = torch.zeros(min(chunk, d_sae - i), d_sae, device=sae.device, dtype=sae.dtype)
        eye[torch.arange(len(eye)), torch.arange(i, i + len(eye))] = 1
        out.append((sae.decode(eye).float() - zero).cpu())
    return torch.cat(out)


def logit_gradients(model: Any, hook: str, images: torch.Tensor,
                    classifier: torch.Tensor) -> torch.Tensor:
    """``[C, tokens, d_in]``: gradient of each zero-shot class logit with respect to the hook's
    activation, averaged over ``images`` (heads flattened for attention hooks)."""
    scale = model.logit_scale()
    delta: dict[str, torch.Tensor] = {}

    def add_delta(act: torch.Tensor, hook: Any) -> torch.Tensor:
        d = torch.zeros(act.shape[1:], dtype=act.dtype, device=act.device, requires_grad=True)
        delta["d"] = d
        return act + d

    with torch.enable_grad():
        emb = model.run_with_hooks(images, fwd_hooks=[(hook, add_delta)])
        logits = scale * torch.nn.functional.normalize(emb.float(), dim=-1) @ classifier.to(
            emb.device).float().T  # [n, C]
        grads = []
        for c in range(logits.shape[1]):
            (g,) = torch.autograd.grad(logits[:, c].sum(), delta["d"], retain_graph=True)
            grads.append(g.float().cpu() / len(images))
    g = torch.stack(grads)
    if g.dim() == 4:  # [C, tokens, heads, d_head]
        g = g.flatten(-2)
    if g.dim() == 2:  # pooled hook: [C, d_in]
        g = g[:, None]
    return g


def logit_effects(model: Any, sae: Any, hook: str, images: torch.Tensor, classifier: torch.Tensor,
                  mean_active: torch.Tensor, n_images: int = 64) -> torch.Tensor:
    """``[d_sae, C]`` first-order logit effect of every latent (see module)."""
    grad = logit_gradients(model, hook, images[:n_images], classifier).sum(1)  # [C, d_in]
    return (decoder_vectors(sae) @ grad.T) * mean_active[:, None]
