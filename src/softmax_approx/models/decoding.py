"""Batched greedy and beam-search decoding for an encoder-decoder model.

The model needs ``encode(src_ids, src_mask) -> memory`` (B, Ls, d) and
``decode(tgt_in, memory, src_mask) -> logits`` (B, Lt, V). A model that also has fairseq-style
incremental decoding (``models.translator.Translator``: ``start_decoding``, ``decode_step``,
``reorder_incremental_state``) is decoded with its key/value cache (``cache=True``, the
default): one new token per hypothesis and step instead of the whole prefix, cross-attention
keys/values computed once per sentence. ``cache=False`` (config
``task.module.decode_cache=false``) re-runs ``decode`` over the whole prefix at every step: the
reference the cached path is tested against (same tokens, scores within 1e-5).

Finished sentences leave the batch (fairseq): every step keeps only the rows of sentences
still being decoded, and one ``reorder`` call per step applies beam search's choice of
hypotheses and that pruning to the cache. Decoding runs under ``torch.no_grad()``, so the
attention modules keep nothing for backward and no softmax policy compresses anything.

Conventions follow fairseq's ``SequenceGenerator``:

* the maximum output length (in tokens, eos included) of sentence i is
  ``floor(max_len_a * src_len_i + max_len_b)`` with ``src_len_i`` its number of real source
  tokens (capped by ``model.max_positions`` when the model has one); at the last position
  eos is forced; ``limits`` (a tensor of per-sentence limits) overrides the formula;
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


def _constrain(logits, step, limits, *, pad_id, bos_id, eos_id, min_len):
    """Next-token log-probabilities (R, V) with fairseq's constraints; ``limits`` per row."""
    lprobs = torch.log_softmax(logits.float(), dim=-1)
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


class _Prefix:
    """The reference: the whole prefix through ``model.decode`` at every step (no cache)."""

    def __init__(self, model, memory, src_mask, group):
        self.model = model
        self.memory = memory.repeat_interleave(group, dim=0)  # (R, Ls, d), one per hypothesis
        self.src_mask = src_mask.repeat_interleave(group, dim=0)

    def logits(self, prefix):
        return self.model.decode(prefix, self.memory, self.src_mask)[:, -1, :]

    def reorder(self, rows):
        self.memory, self.src_mask = self.memory.index_select(0, rows), self.src_mask.index_select(0, rows)


class _Cached:
    """fairseq's incremental state: only the newest token of each hypothesis per step."""

    def __init__(self, model, memory, src_mask, group):
        self.model = model
        self.state = model.start_decoding(memory, src_mask, group)

    def logits(self, prefix):
        return self.model.decode_step(prefix[:, -1], self.state)

    def reorder(self, rows):
        self.model.reorder_incremental_state(self.state, rows)


def _start(model, src_ids, src_mask, group, cache, max_len_a, max_len_b, limits):
    """Encode once; the per-sentence output limits; the cached or the reference stepper."""
    memory = model.encode(src_ids, src_mask)
    if limits is None:
        limits = max_lengths(src_mask, max_len_a, max_len_b, getattr(model, "max_positions", None))
    elif limits.shape != (src_ids.size(0),):
        raise ValueError(f"limits: expected one output limit per sentence, shape ({src_ids.size(0)},), got {tuple(limits.shape)}")
    stepper = _Cached if cache and hasattr(model, "decode_step") else _Prefix
    return stepper(model, memory, src_mask, group), limits.to(torch.long).to(src_ids.device)


@torch.no_grad()
def greedy_decode(model, src_ids, src_mask, *, bos_id, eos_id, pad_id,
                  max_len_a: float = 1.2, max_len_b: int = 10, min_len: int = 1,
                  cache: bool = True, limits: torch.Tensor | None = None) -> Hypotheses:
    """Pick the most probable token at every step; a sentence leaves the batch at its eos."""
    B, dev = src_ids.size(0), src_ids.device
    run, limits = _start(model, src_ids, src_mask, 1, cache, max_len_a, max_len_b, limits)
    alive = torch.arange(B, device=dev)  # original index of each row still decoding
    prefix = torch.full((B, 1), bos_id, dtype=torch.long, device=dev)
    scores = torch.zeros(B, dtype=torch.float32, device=dev)
    tokens: list[list[int]] = [[] for _ in range(B)]
    for step in range(int(limits.max())):
        lprobs = _constrain(run.logits(prefix), step, limits[alive],
                            pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, min_len=min_len)
        lp, tok = lprobs.max(dim=-1)
        scores[alive] += lp
        prefix = torch.cat([prefix, tok[:, None]], dim=1)
        ended = tok == eos_id  # eos is forced at each row's limit, so every row ends
        if bool(ended.any()):
            for i in ended.nonzero().flatten().tolist():
                tokens[int(alive[i])] = prefix[i, 1:-1].tolist()
            keep = (~ended).nonzero().flatten()
            if keep.numel() == 0:
                break
            prefix, alive = prefix.index_select(0, keep), alive[keep]
            run.reorder(keep)
    return Hypotheses(tokens=tokens, scores=scores)


@torch.no_grad()
def beam_search(model, src_ids, src_mask, *, bos_id, eos_id, pad_id, beam: int = 5,
                alpha: float = 1.0, lp_style: str = "fairseq", max_len_a: float = 1.2,
                max_len_b: int = 10, min_len: int = 1, cache: bool = True,
                limits: torch.Tensor | None = None) -> Hypotheses:
    """Batched beam search (fairseq semantics, see the module docstring)."""
    if beam < 1:
        raise ValueError(f"beam={beam} must be >= 1")
    B, K, dev = src_ids.size(0), beam, src_ids.device
    run, limits = _start(model, src_ids, src_mask, K, cache, max_len_a, max_len_b, limits)
    alive = torch.arange(B, device=dev)  # original index of each sentence still decoding
    alive_limits = limits.clone()
    prefix = torch.full((B * K, 1), bos_id, dtype=torch.long, device=dev)  # K rows per sentence
    # Only beam 0 is live at the start, so the K copies of bos do not yield K equal hypotheses.
    scores = torch.full((B, K), -math.inf, device=dev)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for step in range(int(limits.max())):
        n = alive.numel()
        lprobs = _constrain(run.logits(prefix), step, alive_limits.repeat_interleave(K),
                            pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, min_len=min_len)
        V = lprobs.size(-1)
        cand = (scores.unsqueeze(-1) + lprobs.view(n, K, V)).view(n, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=-1)  # (n, 2K), sorted descending
        top_beam, top_tok = top_idx // V, top_idx % V
        is_eos = (top_tok == eos_id) & torch.isfinite(top_scores)

        # Finalise eos continuations that rank among the best K (fairseq's rule).
        hits = is_eos[:, :K].nonzero().tolist()
        if hits:
            prefix_rows = prefix.view(n, K, -1)
            for b, j in hits:
                sent = finished[int(alive[b])]
                if len(sent) < K:
                    toks = prefix_rows[b, int(top_beam[b, j]), 1:].tolist()
                    sent.append((float(top_scores[b, j]) / length_penalty(step + 1, alpha, lp_style), toks))
        full = torch.tensor([len(finished[a]) >= K for a in alive.tolist()], device=dev)
        keep = (~(full | (alive_limits <= step + 1))).nonzero().flatten()
        if keep.numel() == 0:
            break

        # Continue with the best K non-eos candidates (a stable sort keeps score order), of the
        # sentences not finished: the others leave the batch.
        order = torch.sort(is_eos.to(torch.int8), dim=-1, stable=True).indices[keep, :K]
        new_scores = top_scores[keep].gather(1, order).masked_fill(is_eos[keep].gather(1, order), -math.inf)
        new_beam, new_tok = top_beam[keep].gather(1, order), top_tok[keep].gather(1, order)
        rows = (keep[:, None] * K + new_beam).view(-1)  # old row of each new hypothesis
        prefix = torch.cat([prefix.index_select(0, rows), new_tok.view(-1, 1)], dim=1)
        run.reorder(rows)
        alive, alive_limits, scores = alive[keep], alive_limits[keep], new_scores

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
