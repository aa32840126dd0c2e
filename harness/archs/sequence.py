"""What the modern recurrent families share (harness.archs.indrnn, orthogonal, lru, minrnn, mamba):
the scans that run a linear recurrence over a whole sequence at once, and `SequenceNet`, which
stacks a family's layers, reads either direction and wires the head of every io kind exactly as
`RecurrentNet` does (harness.archs).

A family's layer is an `nn.Module` mapping (B, T, D_in) → (B, T, D_out) with
- `forward(x, return_states=False)`: with `return_states`, also the list over t of its state at
  step t, a tuple of tensors each computed one step at a time from the one before, so that
  `torch.autograd.grad(loss, state)` is the full ∂L/∂s_t through time (harness.gradflow);
- `flops(seq_len)`: its analytic forward FLOPs per sample (matmuls, and the recurrence's
  element-wise work, counted once per step whichever way the scan computes it);
- `kernel_name`: how the recurrence runs, the `kernel` a run logs (harness.kernels): `scan`
  (`linear_scan`, ⌈log₂ T⌉ passes over the sequence), `logscan` (`log_scan`), `harness`
  (harness's scan with a hand-written backward), `loop` (torch ops one step at a time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import check
from harness.archs.recurrent import PER_STEP, as_sequence, head_flops, last_state, reverse_within

SCANS = ("parallel", "loop")  # the `scan` option of the scan families: the loop is the reference


def _doubling(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Hillis–Steele over dim 1, without autograd: (h, P) with h_t = a_t h_{t−1} + b_t from
    h_0 = 0 and P_t = a_1 ⋯ a_t, in ⌈log₂ T⌉ passes; pass k composes each step with the one 2^k
    before it. `reverse`: h_t = a_t h_{t+1} + b_t from the end, P_t = a_t ⋯ a_T."""
    a, b = a.clone(), b.clone()  # updated in place: each pass's right-hand side is computed first
    steps, offset = b.shape[1], 1
    while offset < steps:
        now, other = (slice(None, -offset), slice(offset, None)) if reverse else (slice(offset, None), slice(None, -offset))
        b[:, now] = torch.addcmul(b[:, now], a[:, now], b[:, other])
        a[:, now] = a[:, now] * a[:, other]
        offset *= 2
    return b, a


def _chunked(a: torch.Tensor, b: torch.Tensor, chunk: int | None, reverse: bool = False) -> torch.Tensor:
    """`_doubling`'s h chunk after chunk (from the last chunk when `reverse`), each chunk starting
    from the state the one before it ended with: h = h_chunk + P ⊙ h_before."""
    steps = b.shape[1]
    if not chunk or chunk >= steps:
        return _doubling(a, b, reverse)[0]
    starts = range(0, steps, chunk)
    outs, h = {}, None
    for start in reversed(starts) if reverse else starts:
        hs, prods = _doubling(a[:, start : start + chunk], b[:, start : start + chunk], reverse)
        if h is not None:
            hs = torch.addcmul(hs, prods, h.unsqueeze(1))
        outs[start] = hs
        h = hs[:, 0] if reverse else hs[:, -1]
    return torch.cat([outs[start] for start in starts], 1)


class _LinearScan(torch.autograd.Function):
    """The scan with its backward written out, itself a scan run in reverse: with g_t = ∂L/∂h_t,
    ∂L/∂b_t = g_t + ā_{t+1} ∂L/∂b_{t+1} and ∂L/∂a_t = ∂L/∂b_t ⊙ h̄_{t−1} (conjugates: PyTorch's
    convention for complex tensors). Autograd through the doubling's slices instead allocated a
    zero-filled full-size gradient for every slice of every pass: three quarters of a Mamba
    step's time."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, chunk: int | None) -> torch.Tensor:
        h = _chunked(a, b, chunk)
        ctx.save_for_backward(a, h)
        ctx.chunk = chunk
        return h

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, h = ctx.saved_tensors
        later = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1).conj()  # ā_{t+1}, none after the last step
        grad_b = _chunked(later, g, ctx.chunk, reverse=True)
        earlier = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1).conj()  # h̄_{t−1}, h_0 = 0
        return grad_b * earlier, grad_b, None


def linear_scan(a: torch.Tensor, b: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """All states of h_t = a_t ⊙ h_{t−1} + b_t (t = 1..T, h_0 = 0) along dim 1 of (B, T, …)
    tensors (`a` broadcasts against `b`; real or complex), with autograd's gradients.

    Each chunk of `chunk` steps (all T when None) is scanned by doubling (`_doubling`): every step
    of the chunk at once, ⌈log₂ chunk⌉ element-wise passes instead of `chunk` dependent steps; a
    chunk starts from the last state of the one before. Chunks bound the temporaries each pass
    makes; `chunk = 1` is a loop. The backward is the same scan in reverse (`_LinearScan`)."""
    return _LinearScan.apply(a.expand_as(b), b, chunk)


def log_scan(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t−1} + b_t (h_0 = 0) for positive a, b given as logs, along dim 1, in log
    space (Heinsen 2023, the scan of Feng et al. 2024): with a*_t = Σ_{s≤t} log a_s,
    h_t = exp(a*_t + logcumsumexp_{s≤t}(log b_s − a*_s)) — a cumulative sum and a cumulative
    log-sum-exp, no step-by-step dependence, and no product of many a_s underflowing."""
    a_star = torch.cumsum(log_a, 1)
    return torch.exp(a_star + torch.logcumsumexp(log_b - a_star, 1))


def scan_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a recurrence runs in: float32 under autocast's half precisions (a long product
    of gates in bf16 drifts), the input's own otherwise (float64 in the equivalence tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def check_scan(scan) -> None:
    check(scan in SCANS, "scan", f"must be one of {', '.join(SCANS)}, got {scan!r}")


class Stack(nn.Module):
    """One direction of a model: an optional input encoder, the layers in order (dropout
    between them), an optional final norm."""

    def __init__(self, layers: list[nn.Module], *, encoder: nn.Module | None = None, final: nn.Module | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.encoder, self.layers, self.final, self.dropout = encoder, nn.ModuleList(layers), final, dropout

    def forward(self, x: torch.Tensor, return_states: bool = False):
        if self.encoder is not None:
            x = self.encoder(x)
        for i, layer in enumerate(self.layers):
            if i:
                x = F.dropout(x, self.dropout, self.training)
            if return_states and i == len(self.layers) - 1:  # the top layer's states, one step at a time
                x, states = layer(x, return_states=True)
            else:
                x = layer(x)
        if self.final is not None:
            x = self.final(x)
        return (x, states) if return_states else x

    def flops(self, seq_len: int) -> int:
        total = sum(layer.flops(seq_len) for layer in self.layers)
        return total + sum(2 * m.weight.numel() * seq_len for m in [self.encoder] if isinstance(m, nn.Linear))


class SequenceNet(nn.Module):
    """A family's stack per direction (the backward one reads the sequence reversed) and one
    linear head, wired for `io` as `RecurrentNet` is: many-to-one reads the forward direction's
    last output joined with the backward direction's first; per-step heads read every step.
    With `lengths` (zero-padded sequences), the forward direction is causal, so its padding
    changes no real step, and many-to-one reads each sequence's last real step; the backward
    direction reads each sequence reversed within its own length."""

    def __init__(self, stacks: list[Stack], *, io: str, output_size: int, seq_len: int, width: int):
        super().__init__()
        self.stacks, self.io, self.seq_len, self.width = nn.ModuleList(stacks), io, seq_len, width
        self.head = nn.Linear(width * len(stacks), output_size)

    @property
    def bidirectional(self) -> bool:
        return len(self.stacks) == 2

    def forward(self, x: torch.Tensor, return_hidden: bool = False, lengths: torch.Tensor | None = None):
        seq = as_sequence(x, self.io, self.seq_len)

        def reverse(t: torch.Tensor) -> torch.Tensor:
            return t.flip(1) if lengths is None else reverse_within(t, lengths)

        outs, hidden = [], []
        for d, stack in enumerate(self.stacks):
            s = reverse(seq) if d else seq
            if return_hidden:
                out, states = stack(s, return_states=True)
                hidden.append([st if isinstance(st, tuple) else (st,) for st in (states[::-1] if d else states)])
            else:
                out = stack(s)
            outs.append(reverse(out) if d else out)
        out = torch.cat(outs, -1)
        y = self.head(out) if self.io in PER_STEP else self.head(last_state(out, self.width, self.bidirectional, lengths))
        return (y, hidden) if return_hidden else y

    def flops(self, seq_len: int) -> int:
        steps = 1 if self.io == "one-to-one" else seq_len
        return sum(stack.flops(steps) for stack in self.stacks) + head_flops(self.io, steps, [self.head])


def build_net(make_stack, *, io: str, output_size: int, seq_len: int, width: int, bidirectional: bool) -> SequenceNet:
    """A `SequenceNet` of `make_stack()` per direction (each call builds fresh weights)."""
    stacks = [make_stack() for _ in range(2 if bidirectional else 1)]
    return SequenceNet(stacks, io=io, output_size=output_size, seq_len=seq_len, width=width)
