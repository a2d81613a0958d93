"""Beam search as HF transformers does it by default, over sequences that share blocks.

Each step every running beam has the log-probabilities of its next token. The
2 x width best continuations over all beams (more when there are several stop
tokens, so enough survive) are ranked by cumulative log-probability. Among the
top `width` of them, those that end (a stop token, or max_tokens reached) become
finished hypotheses scored by cumulative log-probability / generated length **
length_penalty; the best `width` continuations that do not end become the next
running beams. The search ends when no running beam can beat the worst kept
hypothesis (transformers' default heuristic, early_stopping=False) or when
max_tokens is reached.

This module only decides; the engine realizes the decisions with the block
manager: a beam with one continuation appends to its own sequence, a beam with
k continuations forks k-1 children (sharing its blocks, copy-on-write on the
last one), and a beam with none is freed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedserve.executor.request import Sequence

# transformers' defaults for generate(num_beams=...).
LENGTH_PENALTY = 1.0
_NEG_INF = -1.0e9


@dataclass(frozen=True)
class Hypothesis:
    """A finished beam."""

    score: float  # cumulative_logprob / num_output_tokens ** length_penalty
    output_token_ids: tuple[int, ...]
    cumulative_logprob: float


@dataclass(frozen=True)
class Continuation:
    """Running beam `parent` goes on with token, its cumulative log-probability becoming cumulative_logprob."""

    parent: Sequence
    token_id: int
    logprob: float
    cumulative_logprob: float


class BeamSearch:
    def __init__(
        self, width: int, num_prompt_tokens: int, max_tokens: int, stop_token_ids: frozenset[int]
    ):
        self.width = width
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens
        self.stop_token_ids = stop_token_ids
        self.finished: list[Hypothesis] = []  # best first, at most width
        self.done = False
        self._improvement_possible = True

    def _candidates_per_step(self) -> int:
        return max(2, 1 + len(self.stop_token_ids)) * self.width

    def step(self, beams: list[Sequence], logprobs: torch.Tensor) -> list[Continuation]:
        """Next running beams from each beam's next-token log-probabilities [num_beams, vocab].

        Returns the continuations (empty when the search is done).
        """
        vocab_size = logprobs.shape[1]
        cumulative = torch.tensor(
            [beam.cumulative_logprob for beam in beams], dtype=torch.float32, device=logprobs.device
        )
        scores = (logprobs + cumulative[:, None]).reshape(-1)  # [num_beams * vocab]
        num_candidates = min(self._candidates_per_step(), scores.numel())
        top_scores, top_indices = torch.topk(scores, num_candidates)
        num_output_tokens = beams[0].num_output_tokens + 1  # every beam has the same length
        reaches_max = num_output_tokens >= self.max_tokens
        continuations: list[Continuation] = []
        new_hypotheses: list[Hypothesis] = []
        for rank, (score, flat_index) in enumerate(
            zip(top_scores.tolist(), top_indices.tolist(), strict=True)
        ):
            beam = beams[flat_index // vocab_size]
            token_id = flat_index % vocab_size
            ends = reaches_max or token_id in self.stop_token_ids
            if ends:
                if rank < self.width and self._improvement_possible:
                    output = (*beam.output_token_ids(), token_id)
                    new_hypotheses.append(
                        Hypothesis(score / num_output_tokens**LENGTH_PENALTY, output, score)
                    )
            elif len(continuations) < self.width:
                token_logprob = float(logprobs[flat_index // vocab_size, token_id])
                continuations.append(Continuation(beam, token_id, token_logprob, score))
        self._keep_best(new_hypotheses)
        self._update_heuristic(continuations, num_output_tokens)
        if reaches_max or not self._improvement_possible or not continuations:
            self.done = True
            return []
        return continuations

    def _keep_best(self, new_hypotheses: list[Hypothesis]) -> None:
        merged = self.finished + new_hypotheses
        merged.sort(
            key=lambda hypothesis: hypothesis.score, reverse=True
        )  # stable: earlier first on ties
        self.finished = merged[: self.width]

    def _update_heuristic(self, continuations: list[Continuation], num_output_tokens: int) -> None:
        """transformers' early_stopping=False rule: stop once the best running beam,
        scored at its current length, cannot beat the worst kept hypothesis."""
        if not continuations or len(self.finished) < self.width:
            return
        best_running = continuations[0].cumulative_logprob / num_output_tokens**LENGTH_PENALTY
        worst_finished = self.finished[-1].score
        self._improvement_possible = self._improvement_possible and best_running > worst_finished
