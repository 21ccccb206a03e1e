"""Inverse transformation network attack (ITN-Attack; Ito, Kinoshita & Kiya, as in MaungMaung & Kiya 2022).

Threat model: ciphertext-only with a known data distribution. The adversary knows the algorithm, so it
encrypts look-alike images (here: the dataset's *training* split, never the target images) under
several keys of its own and trains a network to map ciphertext → plain. If the scheme leaks
key-independent structure (PE's folds, block schemes' local statistics), the network learns to undo
it and is then applied to the target's ciphertexts, encrypted under the owner's key, which it never saw.

The network is a small fully convolutional CNN sized for a CPU run (a few seconds to a minute on
32×32 images); pass ``width``/``depth``/``steps`` for a larger run on a GPU. Large images (224×224)
train on random ``crop``×``crop`` windows of the pairs, at offsets that are multiples of ``align`` (16,
a multiple of every block size of the schemes, so a window keeps whole blocks), and the trained network,
being fully convolutional, is applied to the whole target images. torch is imported
lazily here only: lcrypt's core stays numpy. This is our analogue of the published learned attacks
(SIA-GAN), not a re-implementation of them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from lcrypt.attacks.base import Attack, Outcome, Target, changes_the_image
from lcrypt.keys import Key

MIN_LOOKALIKES = 64  # fewer look-alike images than this train nothing worth reporting


def inverse_network_attack(train_plain: np.ndarray, encrypt_with: Callable[[np.ndarray, int], np.ndarray],
                           target_cipher: np.ndarray, keys: int = 4, width: int = 16, depth: int = 4,
                           steps: int = 150, batch: int = 32, lr: float = 2e-3, seed: int = 0,
                           device: str | None = None, threads: int | None = None, crop: int = 64,
                           align: int = 16) -> np.ndarray:
    """Train on ``encrypt_with(train_plain_chunk, key_index)`` → plain pairs under ``keys`` adversary
    keys (on ``crop``-pixel windows when the images are larger), then reconstruct ``target_cipher``.
    Returns uint8 reconstructions shaped like it."""
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chunks = np.array_split(np.arange(len(train_plain)), keys)
    cipher = np.concatenate([encrypt_with(train_plain[idx], k) for k, idx in enumerate(chunks)])
    plain = np.concatenate([train_plain[idx] for idx in chunks])

    def to_t(a: np.ndarray) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div(255.0)

    xs, ys = to_t(cipher).to(dev), to_t(plain).to(dev)

    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.Conv2d(width, 3, 3, padding=1)]
    net = nn.Sequential(*layers).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    net.train()
    h, w = xs.shape[2:]
    ch, cw = min(crop, h), min(crop, w)
    for _ in range(steps):
        idx = torch.randint(0, len(xs), (batch,), generator=gen).to(dev)
        y0 = int(torch.randint(0, (h - ch) // align + 1, (1,), generator=gen)) * align
        x0 = int(torch.randint(0, (w - cw) // align + 1, (1,), generator=gen)) * align
        win = (slice(None), slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))
        loss = nn.functional.l1_loss(net(xs[idx][win]), ys[idx][win])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    outs: Sequence[np.ndarray] = []
    with torch.no_grad():
        for i in range(0, len(target_cipher), 256):
            y = net(to_t(target_cipher[i:i + 256]).to(dev)).clamp(0, 1).mul(255).round()
            outs.append(y.byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(outs)


def _run(target: Target) -> Outcome:
    if target.budget.itn_steps <= 0:
        return Outcome(skipped="training steps set to 0")
    if len(target.known) < MIN_LOOKALIKES:
        return Outcome(skipped=f"needs {MIN_LOOKALIKES} look-alike images, the adversary holds "
                               f"{len(target.known)}")
    scheme = target.scheme
    adversary = [Key.generate("adversary") for _ in range(4)]
    recon = inverse_network_attack(target.known, lambda a, k: scheme.encrypt(a, adversary[k]), target.cipher,
                                   keys=len(adversary), steps=target.budget.itn_steps,
                                   threads=target.budget.threads)
    return Outcome(recon)


INVERSE_NETWORK = Attack("inverse-network", "ciphertext-only",
                         "CNN trained on look-alike pairs under other keys",
                         applies_to=changes_the_image, run=_run)
