"""The search's samplers: NSGA-II, TPE or random, each seeded per trial number.

In: a ``SearchConfig`` (``sampler``, ``seed``, ``population``). Out: an Optuna sampler (``make_sampler``).
Repeatable: the sampler draws trial N's parameters from a random stream seeded by (``seed``, N), so the same
seed gives the same parameters, and resumed or parallel workers do not repeat each other's draws.
Never: runs unseeded: Optuna has no public per-trial seed, so this relies on its samplers keeping their random
state as ``_rng`` (optuna 5, pinned in pyproject.toml); a version that moves it is a ConfigError, not a
silently unseeded search.
"""

from __future__ import annotations

import hashlib
from typing import Any

import optuna
from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler

from condense import ConfigError

from ._config import SearchConfig


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class _PerTrialSeed:
    """Mixin: reseed the sampler's random streams from (seed, trial number) before each trial."""

    _condense_seed: int

    def before_trial(self, study, trial):  # type: ignore[override]
        # Optuna has no public way to seed a sampler per trial (``reseed_rng`` draws a fresh random seed):
        # this relies on its samplers keeping a ``_LazyRandomState`` as ``_rng`` (and NSGA-II/TPE a random
        # sampler as ``_random_sampler``), pinned in pyproject.toml (optuna < 6) and checked by
        # tests/test_search.py; if a version moves them, this fails loudly instead of silently unseeding.
        s = _seed_of(self._condense_seed, trial.number)
        for holder in (self, getattr(self, "_random_sampler", None)):
            if holder is None:
                continue
            lazy = getattr(holder, "_rng", None)
            if lazy is None or not hasattr(lazy, "rng"):
                raise ConfigError(
                    f"optuna {optuna.__version__}: {type(holder).__name__} keeps no _rng.rng, which "
                    "per-trial seeding needs",
                    "install optuna 5 (pip install 'optuna>=5,<6')",
                )
            lazy.rng.seed(s)
            s = _seed_of(s, 1)
        super().before_trial(study, trial)


class CondenseNSGAIISampler(_PerTrialSeed, NSGAIISampler):
    """NSGA-II whose draws for trial N depend only on (seed, N) and the finished trials it sees."""

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._condense_seed = seed


class CondenseTPESampler(_PerTrialSeed, TPESampler):
    """TPE whose draws for trial N depend only on (seed, N) and the finished trials it sees."""

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._condense_seed = seed


class CondenseRandomSampler(_PerTrialSeed, RandomSampler):
    """Uniform random search (the baseline a multi-objective sampler has to beat), draws seeded per trial."""

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._condense_seed = seed


def make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "tpe":
        return CondenseTPESampler(seed=config.seed)
    if config.sampler == "random":
        return CondenseRandomSampler(seed=config.seed)
    return CondenseNSGAIISampler(seed=config.seed, population_size=config.population)
