"""The search space, re-exported: it is declared in ``condense._space`` (public as ``condense.SearchSpace``,
``condense.build_space``), which the supernet shares. In: nothing. Out: those names. Never: declares anything."""

from condense import GLOBAL_ONLY, INITS, K_RANGE, Param, RunSpace, SearchSpace, build_space

__all__ = ["Param", "RunSpace", "SearchSpace", "build_space", "K_RANGE", "INITS", "GLOBAL_ONLY"]
