"""Batched greedy and beam-search decoding for an encoder-decoder model.

The model needs two methods (``models.translator.Translator`` has them):

* ``encode(src_ids, src_mask) -> memory``  with ``memory`` of shape (B, Ls, d);
* ``decode(tgt_in, memory, src_mask) -> logits`` of shape (B, Lt, V).

There is no key/value cache: each step re-runs the decoder over the whole prefix. That is
O(L^2) decoder work per sentence, which is negligible next to training at our lengths, and it
keeps one code path (the same causal attention as training) so there is nothing to go stale.

Conventions follow fairseq's ``SequenceGenerator``:

* the maximum output length (in tokens, eos included) of sentence i is
  ``floor(max_len_a * src_len_i + max_len_b)`` with ``src_len_i`` its number of real source
  tokens (capped by ``model.max_positions`` when the model has one); at the last position
  eos is forced;
* eos is blocked before ``min_len`` tokens (default 1: no empty translations); pad and bos
  are never generated;
* beam search keeps ``beam`` live prefixes, looks at the best ``2*beam`` continuations per
  sentence, finalises an eos continuation only when it ranks among the best ``beam``, and
  stops a sentence once it has ``beam`` finished hypotheses;
* a finished hypothesis of n tokens (eos included) with log-probability sum s is ranked by
  the length-normalised score ``s / lp(n)``: ``lp(n) = n ** alpha`` (fairseq ``--lenpen``,
  the default style) or ``((5 + n) / 6) ** alpha`` (GNMT, Wu et al. 2016). ``alpha = 0``
  ranks by the raw log-probability. With ``beam=1`` this is exactly greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Hypotheses", "greedy_decode", "beam_search", "max_lengths", "length_penalty"]


@dataclass
class Hypotheses:
    """Best output per sentence: token ids without bos/eos, and its (normalised) score."""

    tokens: list[list[int]]
    scores: torch.Tensor  # (B,) float; greedy: log-prob sum, beam: length-normalised


def max_lengths(src_mask: torch.Tensor, max_len_a: float, max_len_b: int, cap: int | None = None) -> torch.Tensor:
    """Per-sentence output limit (eos included): floor(a * src_len + b), in [1, cap]."""
    src_len = src_mask.sum(dim=1).to(torch.float64)
    limits = torch.clamp(torch.floor(max_len_a * src_len + max_len_b), min=1)
    if cap is not None:  # the model's position table: the longest prefix it can read
        limits = torch.clamp(limits, max=cap)
    return limits.to(torch.long)


def length_penalty(n: torch.Tensor | int, alpha: float, style: str = "fairseq") -> torch.Tensor | float:
    """Divisor of the log-probability sum for a hypothesis of n tokens (eos included)."""
    if style == "fairseq":
        return n**alpha
    if style == "gnmt":
        return ((5 + n) / 6) ** alpha
    raise ValueError(f"length_penalty style={style!r} is unknown; use 'fairseq' or 'gnmt'")


def _step_logprobs(model, prefix, memory, src_mask, step, limits, *, pad_id, bos_id, eos_id, min_len):
    """Log-probabilities of the next token for every row, with fairseq's constraints applied."""
    logits = model.decode(prefix, memory, src_mask)[:, -1, :].float()
    lprobs = torch.log_softmax(logits, dim=-1)
    lprobs[:, pad_id] = -math.inf
    if bos_id != eos_id:
        lprobs[:, bos_id] = -math.inf
    if step < min_len:
        lprobs[:, eos_id] = -math.inf
    at_limit = limits <= step + 1  # this is the last allowed position: only eos
    if at_limit.any():
        eos_lp = lprobs[at_limit, eos_id].clone()
        lprobs[at_limit] = -math.inf
        lprobs[at_limit, eos_id] = eos_lp if step >= min_len else 0.0
    return lprobs


@torch.no_grad()
def greedy_decode(model, src_ids, src_mask, *, bos_id, eos_id, pad_id,
                  max_len_a: float = 1.2, max_len_b: int = 10, min_len: int = 1) -> Hypotheses:
    """Pick the most probable token at every step, for the whole batch at once."""
    B = src_ids.size(0)
    memory = model.encode(src_ids, src_mask)
    limits = max_lengths(src_mask, max_len_a, max_len_b, getattr(model, "max_positions", None))
    prefix = torch.full((B, 1), bos_id, dtype=torch.long, device=src_ids.device)
    scores = torch.zeros(B, dtype=torch.float32, device=src_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
    for step in range(int(limits.max())):
        lprobs = _step_logprobs(model, prefix, memory, src_mask, step, limits,
                                pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, min_len=min_len)
        lp, tok = lprobs.max(dim=-1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        scores = scores + torch.where(done, torch.zeros_like(lp), lp)
        prefix = torch.cat([prefix, tok[:, None]], dim=1)
        done = done | (tok == eos_id)
        if bool(done.all()):
            break
    tokens = []
    for row in prefix[:, 1:].tolist():
        out = []
        for t in row:
            if t in (eos_id, pad_id):
                break
            out.append(t)
        tokens.append(out)
    return Hypotheses(tokens=tokens, scores=scores)


@torch.no_grad()
def beam_search(model, src_ids, src_mask, *, bos_id, eos_id, pad_id, beam: int = 5,
                alpha: float = 1.0, lp_style: str = "fairseq", max_len_a: float = 1.2,
                max_len_b: int = 10, min_len: int = 1) -> Hypotheses:
    """Batched beam search (fairseq semantics, see the module docstring)."""
    if beam < 1:
        raise ValueError(f"beam={beam} must be >= 1")
    B, K, dev = src_ids.size(0), beam, src_ids.device
    memory = model.encode(src_ids, src_mask).repeat_interleave(K, dim=0)  # (B*K, Ls, d)
    src_mask_k = src_mask.repeat_interleave(K, dim=0)
    limits = max_lengths(src_mask, max_len_a, max_len_b, getattr(model, "max_positions", None))
    limits_k = limits.repeat_interleave(K)
    prefix = torch.full((B * K, 1), bos_id, dtype=torch.long, device=dev)
    # Only beam 0 is live at the start, so the K copies of bos do not yield K equal hypotheses.
    scores = torch.full((B, K), -math.inf, device=dev)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(int(limits.max())):
        lprobs = _step_logprobs(model, prefix, memory, src_mask_k, step, limits_k,
                                pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, min_len=min_len)
        V = lprobs.size(-1)
        cand = (scores.unsqueeze(-1) + lprobs.view(B, K, V)).view(B, K * V)
        n_cand = min(2 * K, K * V)
        top_scores, top_idx = cand.topk(n_cand, dim=-1)  # (B, 2K), sorted descending
        top_beam, top_tok = top_idx // V, top_idx % V
        is_eos = (top_tok == eos_id) & torch.isfinite(top_scores)

        # Finalise eos continuations that rank among the best K (fairseq's rule).
        hits = (is_eos[:, :K]).nonzero().tolist()
        if hits:
            prefix_rows = prefix.view(B, K, -1)
            for b, j in hits:
                if done[b] or len(finished[b]) >= K:
                    continue
                n = step + 1
                toks = prefix_rows[b, int(top_beam[b, j]), 1:].tolist()
                norm = float(top_scores[b, j]) / length_penalty(n, alpha, lp_style)
                finished[b].append((norm, toks))
        for b in range(B):
            if not done[b] and (len(finished[b]) >= K or step + 1 >= int(limits[b])):
                done[b] = True
        if all(done):
            break

        # Continue with the best K non-eos candidates (a stable sort keeps score order).
        order = torch.sort(is_eos.to(torch.int8), dim=-1, stable=True).indices[:, :K]
        new_scores = top_scores.gather(1, order)
        new_scores = new_scores.masked_fill(is_eos.gather(1, order), -math.inf)
        new_beam = top_beam.gather(1, order)
        new_tok = top_tok.gather(1, order)
        rows = (torch.arange(B, device=dev)[:, None] * K + new_beam).view(-1)
        prefix = torch.cat([prefix[rows], new_tok.view(-1, 1)], dim=1)
        scores = new_scores
        done_t = torch.tensor(done, device=dev)
        scores = scores.masked_fill(done_t[:, None], -math.inf)

    tokens, best = [], []
    for b in range(B):
        if not finished[b]:  # cannot happen with max-length forcing; keep the output defined
            tokens.append([])
            best.append(-math.inf)
            continue
        score, toks = max(finished[b], key=lambda x: x[0])
        tokens.append(toks)
        best.append(score)
    return Hypotheses(tokens=tokens, scores=torch.tensor(best))


def decode(model, src_ids, src_mask, *, strategy: str = "beam", **kwargs) -> Hypotheses:
    """Dispatch on ``strategy`` ('greedy' or 'beam')."""
    if strategy == "greedy":
        kwargs = {k: v for k, v in kwargs.items() if k not in ("beam", "alpha", "lp_style")}
        return greedy_decode(model, src_ids, src_mask, **kwargs)
    if strategy == "beam":
        return beam_search(model, src_ids, src_mask, **kwargs)
    raise ValueError(f"decoding strategy={strategy!r} is unknown; use 'greedy' or 'beam'")
