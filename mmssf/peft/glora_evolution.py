"""GLoRA's evolutionary search of per-layer supports under a parameter limit (Chavan et al.,
"One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning", 2023; official code
Arnav0400/ViT-Slim ``GLoRA/evolution_utils.py``, ``EvolutionSearcher``).

A candidate gives every tuned layer one support ``dict(A=, B=, C=, D=, E=)`` from
:data:`~mmssf.peft.glora.CHOICES`. As the official search:

* ``population`` random candidates under the limit start it (a candidate over ``max_params`` or
  under ``min_params``, counted as the official ``get_param``, is drawn again; a candidate is
  evaluated once);
* each of ``epochs`` rounds ranks all candidates seen so far by score and keeps the best
  ``select``; ``mutation`` new candidates copy one of them and redraw each support tensor with
  probability ``m_prob``, ``crossover`` new ones take each layer's each tensor from one of two of
  them (each at most 10 × its number of draws), and random candidates fill the population again.

The official ranks the candidates of a round at the start of the next one, so its last round's
candidates are evaluated but never ranked; here the best is taken over every evaluated candidate
(the last round counts). The official draws random candidates until the population is full; here
``max_draws`` bounds that (a limit that almost no random candidate meets is an error naming the
average random cost, not an endless loop).
"""
import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .glora import CHOICES, LARGEST, TENSORS, layer_cost

Candidate = Tuple[Tuple[Tuple[str, str], ...], ...]


class GLoRAEvolution:
    """The search (see the module doc).

    Args:
        layers: ``{module name: (in, out)}`` of the tuned layers, in model order.
        rank: r of the 'lora' supports (for the cost).
        evaluate: ``f({module name: support}) -> score`` (higher is better: val accuracy).
        max_params / min_params: the limit on a candidate's trainable parameters.
        epochs, population, select, mutation, crossover, m_prob: official 20, 50, 10, 25, 25, 0.2.
        seed: of the search's own random draws.
        max_draws: random draws allowed per filling of the population (default
            ``max(1000, 100 * population)``).
        log: called with one line per event (default: silent).
    """

    def __init__(self, layers: Dict[str, Sequence[int]], rank: int,
                 evaluate: Callable[[Dict[str, Dict[str, str]]], float], max_params: int,
                 min_params: int = 0, epochs: int = 20, population: int = 50, select: int = 10,
                 mutation: int = 25, crossover: int = 25, m_prob: float = 0.2, seed: int = 0,
                 max_draws: Optional[int] = None, log: Callable[[str], None] = lambda s: None):
        if not layers:
            raise ValueError('GLoRA search: no tuned layers')
        for name, value in dict(epochs=epochs, mutation=mutation, crossover=crossover,
                                min_params=min_params).items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f'GLoRA search: {name} must be an int >= 0, got {value!r}')
        for name, value in dict(population=population, select=select, rank=rank,
                                max_params=max_params).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'GLoRA search: {name} must be an int >= 1, got {value!r}')
        if not 0 <= m_prob <= 1:
            raise ValueError(f'GLoRA search: m_prob must be in [0, 1], got {m_prob!r}')
        if min_params > max_params:
            raise ValueError(f'GLoRA search: min_params {min_params} exceeds max_params '
                             f'{max_params}')
        self.names = list(layers)
        self.shapes = [tuple(layers[n]) for n in self.names]
        self.rank, self.evaluate_fn = rank, evaluate
        self.max_params, self.min_params = max_params, min_params
        self.epochs, self.population, self.select = epochs, population, select
        self.mutation, self.crossover, self.m_prob = mutation, crossover, m_prob
        self.max_draws = max_draws or max(1000, 100 * population)
        self.rng = random.Random(seed)
        self.log = log
        self.scores: Dict[Candidate, float] = {}
        self.order: List[Candidate] = []  # evaluated, in evaluation order
        self.history: List[dict] = []

    # -- candidates ---------------------------------------------------------------------------
    @staticmethod
    def freeze(supports: List[Dict[str, str]]) -> Candidate:
        return tuple(tuple((k, s[k]) for k in TENSORS) for s in supports)

    def as_supports(self, cand: Candidate) -> Dict[str, Dict[str, str]]:
        return {name: dict(layer) for name, layer in zip(self.names, cand)}

    def cost(self, cand: Candidate) -> int:
        """Trainable parameters of a candidate (the official ``get_param``; head excluded)."""
        return sum(layer_cost(dict(layer), fan_in, fan_out, self.rank)
                   for layer, (fan_in, fan_out) in zip(cand, self.shapes))

    def random_candidate(self) -> Candidate:
        return self.freeze([{k: self.rng.choice(CHOICES[k]) for k in TENSORS}
                            for _ in self.names])

    def mutate(self, parents: List[Candidate]) -> Candidate:
        parent = self.rng.choice(parents)
        return self.freeze([{k: self.rng.choice(CHOICES[k]) if self.rng.random() < self.m_prob
                             else dict(layer)[k] for k in TENSORS} for layer in parent])

    def cross(self, parents: List[Candidate]) -> Candidate:
        one, two = self.rng.choice(parents), self.rng.choice(parents)
        return self.freeze([{k: self.rng.choice([dict(a)[k], dict(b)[k]]) for k in TENSORS}
                            for a, b in zip(one, two)])

    def try_add(self, cand: Candidate) -> bool:
        """Evaluate ``cand`` if it is new and within the limit (the official ``is_legal``)."""
        if cand in self.scores:
            return False
        params = self.cost(cand)
        if not self.min_params <= params <= self.max_params:
            return False
        self.scores[cand] = float(self.evaluate_fn(self.as_supports(cand)))
        self.order.append(cand)
        self.log(f'candidate {len(self.order)}: score {self.scores[cand]:.4f}, {params} params')
        return True

    def draw(self, make: Callable[[], Candidate], wanted: int, tries: int) -> List[Candidate]:
        out = []
        while len(out) < wanted and tries > 0:
            tries -= 1
            cand = make()
            if self.try_add(cand):
                out.append(cand)
        return out

    def fill_random(self, candidates: List[Candidate]) -> List[Candidate]:
        wanted = self.population - len(candidates)
        new = self.draw(self.random_candidate, wanted, self.max_draws)
        if not self.order:  # (nothing met the limit: an endless loop in the official)
            mean = sum(self.cost(self.random_candidate()) for _ in range(200)) / 200
            raise ValueError(
                f'GLoRA search: none of {self.max_draws} random supports met the limit '
                f'[{self.min_params}, {self.max_params}] parameters '
                f'(a random support costs {mean:.0f} on average, the largest '
                f'{self.cost(self.freeze([LARGEST] * len(self.names)))}): '
                f'raise the limit (--params) or lower --min-params')
        return candidates + new

    def ranked(self) -> List[Candidate]:
        return sorted(self.order, key=lambda c: self.scores[c], reverse=True)  # (stable)

    # -- the search ---------------------------------------------------------------------------
    def search(self) -> Tuple[Dict[str, Dict[str, str]], dict]:
        """Run it; return the best candidate's supports and a summary (plain data)."""
        self.fill_random([])
        for epoch in range(self.epochs):
            top = self.ranked()[:self.select]
            self.history.append(dict(epoch=epoch, evaluated=len(self.order),
                                     best=self.scores[top[0]], top=[self.scores[c] for c in top]))
            self.log(f'epoch {epoch}: best {self.scores[top[0]]:.4f} of {len(self.order)}')
            mutated = self.draw(lambda: self.mutate(top), self.mutation, 10 * self.mutation)
            crossed = self.draw(lambda: self.cross(top), self.crossover, 10 * self.crossover)
            self.fill_random(mutated + crossed)
        best = self.ranked()[0]
        summary = dict(score=self.scores[best], params=self.cost(best), evaluated=len(self.order),
                       epochs=self.epochs, population=self.population, select=self.select,
                       mutation=self.mutation, crossover=self.crossover, m_prob=self.m_prob,
                       limit=[self.min_params, self.max_params], history=self.history)
        return self.as_supports(best), summary
