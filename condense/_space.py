"""The plan space: declared once here, turned into Optuna suggestions and into a condense ``Plan``.

It lives in ``condense`` (public as ``condense.SearchSpace``, ``condense.build_space``) because both the
search (``search``, per trial) and the weight-sharing supernet (``condense.supernet``) range over it, and
``condense`` never imports ``search``.

In: the runs ``condense.find_runs`` found in a model, and optional narrowing (layer types, K range).
Out: a ``SearchSpace`` whose ``params`` list every Optuna parameter (name, distribution, scope, meaning),
``suggest(trial)`` (asks Optuna for all of them) and ``plan(params)`` (a ``condense.Plan``).
Never: builds or trains a model.

How choices are shared (keeps the space small; its size grows with the runs, not with the layer options):

* **One value for the whole model** (every condensed run uses it): ``layer`` (the layer type), ``K``
  (PDE steps, 1..20), ``init`` (initial guess: the kept blocks' output, ``input``, or a copy of the first
  replaced block, ``block``), and the Global layer's ``velocity``, ``diffusion`` and ``source``.
* **One value per run**: ``condense[PATH]`` (is the run condensed at all) and ``m[PATH]`` (blocks kept,
  anchor included, 1..r-1; a run that is not condensed keeps all r blocks).

Block dropping (layer type ``drop``: the removed blocks are deleted, nothing replaces them) is chosen per
run, so a search can tell in which runs a PDE layer earns its cost: with ``drop`` among the layer types and
at least one other, ``layer`` ranges over the others and every run gets ``drop[PATH]`` (True: that run's
removed blocks are deleted instead of replaced by the shared layer type). With ``drop`` alone, ``layer`` is
``drop`` and there are no ``drop[PATH]`` parameters. A dropped run has no K, options or initial guess.

Width (``widths``, e.g. ``(0.25, 0.5)``; none by default): every run also gets ``width[PATH]``, the share of
its channels Torch-Pruning removes from the original before the plan is applied (0 or one of ``widths``;
``condense._width``: the group of channels a run owns, its residual stream included). Width acts whether or
not the run is condensed. The per-trial strategy only: the supernet shares weights across depths and layer
types, not across widths.

Width alone (``depth=False``, ``condense search --no-depth``, with ``widths``): the space is the
``width[PATH]`` parameters and nothing else; every run keeps all its blocks. This is the channel-pruning
baseline front (Torch-Pruning with per-run shares) searched, trained and counted by the same loop as the
depth and joint spaces, so that ``condense compare`` sets the three side by side.

Every parameter is suggested in every trial, also where it has no effect (``velocity`` when the layer is
an RD layer, ``m[PATH]`` when the run is off): the space is then the same fixed product for every trial,
which NSGA-II needs to cross over and mutate all parameters (conditional parameters would fall back to
random sampling). ``plan`` ignores the ones that do not apply, and the trial table shows them as empty.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from rich.markup import escape
from rich.table import Table

from ._errors import ConfigError
from ._fit import Plan
from .graph import RunChoice
from .pde import DIFFUSIONS, DROP, SOURCES, VELOCITIES, layer_names

__all__ = ["Param", "RunSpace", "SearchSpace", "build_space", "K_RANGE", "INITS", "GLOBAL_ONLY"]

K_RANGE = (1, 20)
INITS = ("input", "block")
GLOBAL_ONLY = ("velocity", "diffusion", "source")  # parameters that only the Global layer has


@dataclasses.dataclass(frozen=True)
class Param:
    """One Optuna parameter: its name, distribution, who shares it, and what it means."""

    name: str
    distribution: BaseDistribution
    scope: str
    meaning: str

    def describe(self) -> str:
        d = self.distribution
        if isinstance(d, IntDistribution):
            return f"int {d.low}..{d.high}"
        return "{" + ", ".join(str(c) for c in d.choices) + "}"


@dataclasses.dataclass(frozen=True)
class RunSpace:
    """A run of the model as the space sees it: path, number of blocks r, channels, shape."""

    path: str
    r: int
    channels: int
    shape: tuple[int, int, int]
    block_class: str = ""

    @property
    def label(self) -> str:
        return self.path or "<root>"


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What a trial may choose (see the module docstring for how choices are shared)."""

    runs: tuple[RunSpace, ...]
    layers: tuple[str, ...] = tuple(layer_names())
    K: tuple[int, int] = K_RANGE
    velocities: tuple[str, ...] = VELOCITIES
    diffusions: tuple[str, ...] = DIFFUSIONS
    sources: tuple[str, ...] = SOURCES
    inits: tuple[str, ...] = INITS
    widths: tuple[float, ...] = ()  # shares of channels a run's width[PATH] may remove besides 0 (none: no width)
    depth: bool = True  # False: width[PATH] only, every run keeps its blocks (needs widths)

    @property
    def width_choices(self) -> tuple[float, ...]:
        """The values of every ``width[PATH]`` (0 first), or () when the space has no width."""
        return (0.0, *sorted({float(w) for w in self.widths} - {0.0})) if self.widths else ()

    @property
    def pde_layers(self) -> tuple[str, ...]:
        """The layer types other than ``drop`` (what ``layer`` ranges over when runs can be dropped)."""
        return tuple(name for name in self.layers if name != DROP)

    @property
    def drop_per_run(self) -> bool:
        """Whether each run chooses between the shared layer type and ``drop`` (``drop[PATH]``)."""
        return self.depth and DROP in self.layers and bool(self.pde_layers)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError(
                "the model has no runs of repeated same-resolution blocks: nothing to search",
                "condense find MODEL lists what condense sees",
            )
        unknown = [name for name in self.layers if name not in layer_names()]
        if unknown or not self.layers:
            raise ConfigError(
                f"unknown layer type(s) {', '.join(unknown) or '(none given)'}",
                f"choose from {', '.join(layer_names())}",
            )
        lo, hi = self.K
        if not (isinstance(lo, int) and isinstance(hi, int) and K_RANGE[0] <= lo <= hi <= K_RANGE[1]):
            raise ConfigError(f"K range {lo}..{hi} is not within {K_RANGE[0]}..{K_RANGE[1]}", "write e.g. 1-20")
        for field, allowed in (
            ("velocities", VELOCITIES),
            ("diffusions", DIFFUSIONS),
            ("sources", SOURCES),
            ("inits", INITS),
        ):
            values = getattr(self, field)
            if not values or any(v not in allowed for v in values):
                raise ConfigError(f"bad {field} {values!r}", f"choose from {', '.join(allowed)}")
        labels = [r.label for r in self.runs]
        if len(set(labels)) != len(labels):
            raise ConfigError("two runs share a path")
        bad = [w for w in self.widths if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1]
        if bad:
            raise ConfigError(
                f"width {bad[0]!r} is not a share of channels to remove in [0, 1)", "write e.g. --widths 0.25,0.5"
            )
        object.__setattr__(self, "widths", tuple(sorted({float(w) for w in self.widths})))
        if not isinstance(self.depth, bool):
            raise ConfigError(f"depth={self.depth!r} must be True or False")
        if not self.depth and not self.widths:
            raise ConfigError(
                "a search without depth (--no-depth) has nothing to choose",
                "add --widths, e.g. --widths 0.25,0.5, or drop --no-depth",
            )

    # --- the one declaration ---------------------------------------------------------------------------
    @property
    def params(self) -> tuple[Param, ...]:
        """Every Optuna parameter of the space, in suggestion order."""
        if not self.depth:
            return tuple(self._width_param(run) for run in self.runs)
        model = "whole model"
        out = [
            Param(
                "layer",
                CategoricalDistribution(self.pde_layers or (DROP,)),
                model,
                "layer type of every condensed run" + (" not dropped" if self.drop_per_run else ""),
            ),
            Param("K", IntDistribution(*self.K), model, "PDE steps of the new layers"),
            Param(
                "init",
                CategoricalDistribution(self.inits),
                model,
                "initial guess: kept blocks' output (input) or a copy of the first replaced block (block)",
            ),
            Param(
                "velocity",
                CategoricalDistribution(self.velocities),
                model + " (global layer)",
                "Global layer velocity field",
            ),
            Param(
                "diffusion",
                CategoricalDistribution(self.diffusions),
                model + " (global layer)",
                "Global layer diffusion field",
            ),
            Param(
                "source",
                CategoricalDistribution(self.sources),
                model + " (global layer)",
                "Global layer source term f(I)",
            ),
        ]
        for run in self.runs:
            out.append(
                Param(
                    self.on_name(run),
                    CategoricalDistribution((True, False)),
                    f"run {run.label}",
                    f"condense this run ({run.block_class} x{run.r} at {'x'.join(map(str, run.shape))})",
                )
            )
            out.append(
                Param(
                    self.m_name(run),
                    IntDistribution(1, max(1, run.r - 1)),
                    f"run {run.label}",
                    f"blocks kept when condensed (anchor included; r = {run.r})",
                )
            )
            if self.drop_per_run:
                out.append(
                    Param(
                        self.drop_name(run),
                        CategoricalDistribution((False, True)),
                        f"run {run.label}",
                        "when condensed, delete the removed blocks (drop) instead of the shared layer",
                    )
                )
            if self.widths:
                out.append(self._width_param(run))
        return tuple(out)

    def _width_param(self, run: RunSpace) -> Param:
        return Param(
            self.width_name(run),
            CategoricalDistribution(self.width_choices),
            f"run {run.label}",
            f"share of the run's channels removed (Torch-Pruning; {run.channels} channels)",
        )

    @staticmethod
    def on_name(run: RunSpace) -> str:
        return f"condense[{run.label}]"

    @staticmethod
    def m_name(run: RunSpace) -> str:
        return f"m[{run.label}]"

    @staticmethod
    def drop_name(run: RunSpace) -> str:
        return f"drop[{run.label}]"

    @staticmethod
    def width_name(run: RunSpace) -> str:
        return f"width[{run.label}]"

    def width_of(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Run path -> share of channels removed, for the runs a trial prunes ({} without width)."""
        if not self.widths:
            return {}
        return {
            run.path: float(params[self.width_name(run)])
            for run in self.runs
            if float(params[self.width_name(run)]) > 0
        }

    def _dropped(self, params: Mapping[str, Any], run: RunSpace) -> bool:
        return params["layer"] == DROP or (self.drop_per_run and bool(params[self.drop_name(run)]))

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution for p in self.params}

    @property
    def size(self) -> int:
        """Number of distinct points (parameter combinations) in the space."""
        n = 1
        for p in self.params:
            d = p.distribution
            n *= (d.high - d.low + 1) if isinstance(d, IntDistribution) else len(d.choices)
        return n

    # --- trials <-> plans ------------------------------------------------------------------------------
    def suggest(self, trial) -> dict[str, Any]:
        """Ask ``trial`` (an ``optuna.Trial``) for every parameter; returns name -> value."""
        values: dict[str, Any] = {}
        for p in self.params:
            d = p.distribution
            if isinstance(d, IntDistribution):
                values[p.name] = trial.suggest_int(p.name, d.low, d.high)
            else:
                values[p.name] = trial.suggest_categorical(p.name, d.choices)
        return values

    def effective(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The choices that matter for ``params``: irrelevant ones become None, ``m`` becomes r when off."""
        missing = [p.name for p in self.params if p.name not in params]
        if missing:
            raise ConfigError(f"trial parameters lack {', '.join(missing)}", "was the study made for another space?")
        on = {r.label: self.depth and bool(params[self.on_name(r)]) for r in self.runs}
        any_on = any(on.values())
        any_layer = any(on[r.label] and not self._dropped(params, r) for r in self.runs)  # a run with a layer
        is_global = any_layer and params["layer"] == "global"
        out: dict[str, Any] = {"layer": params["layer"] if any_layer else DROP if any_on else None}
        for name in ("K", "init"):
            out[name] = params[name] if any_layer else None
        for name in GLOBAL_ONLY:
            out[name] = params[name] if any_layer and is_global else None
        for run in self.runs:
            out[self.m_name(run)] = min(int(params[self.m_name(run)]), run.r - 1) if on[run.label] else run.r
            if self.drop_per_run:
                out[self.drop_name(run)] = self._dropped(params, run) if on[run.label] else None
            if self.widths:
                out[self.width_name(run)] = float(params[self.width_name(run)])
        return out

    def plan(self, params: Mapping[str, Any]) -> Plan:
        """The condense ``Plan`` of a trial's parameters (runs that are off are left out)."""
        eff = self.effective(params)
        options: dict[str, Any] = {"K": eff["K"]}
        if eff["layer"] == "global":
            options.update({name: eff[name] for name in GLOBAL_ONLY})
        choices = {}
        for run in self.runs:
            m = eff[self.m_name(run)]
            if m < run.r and self._dropped(params, run):
                choices[run.path] = RunChoice(m=m, layer=DROP, options={}, init="input")
            elif m < run.r:
                choices[run.path] = RunChoice(m=m, layer=eff["layer"], options=dict(options), init=eff["init"])
        return Plan(choices)

    def params_of_plan(
        self, ms: Mapping[str, int], *, layer: str = "global", K: int = 5, init: str = "input", **options: Any
    ) -> dict[str, Any]:
        """Trial parameters that give the plan ``ms`` (run path -> m) with these shared choices (to enqueue);
        ``layer="drop"`` drops every condensed run."""
        defaults = {"velocity": "dwconv", "diffusion": "constant", "source": "identity"}
        drop = layer == DROP
        if drop and self.drop_per_run:  # the runs drop; the shared layer type is then unused
            layer = "global" if "global" in self.pde_layers else self.pde_layers[0]
        out: dict[str, Any] = {"layer": layer, "K": int(min(max(K, self.K[0]), self.K[1])), "init": init}
        for name in GLOBAL_ONLY:
            out[name] = options.get(name, defaults[name])
        for run in self.runs:
            m = int(ms.get(run.path, run.r))
            out[self.on_name(run)] = m < run.r
            out[self.m_name(run)] = min(m, max(1, run.r - 1))
            if self.drop_per_run:
                out[self.drop_name(run)] = drop
            if self.widths:
                out[self.width_name(run)] = 0.0
        for p in self.params:
            d = p.distribution
            value = out[p.name]
            if isinstance(d, CategoricalDistribution) and value not in d.choices:
                raise ConfigError(f"{p.name}={value!r} is not in the space")
        return out

    # --- description -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [dataclasses.asdict(r) | {"shape": list(r.shape)} for r in self.runs],
            "layers": list(self.layers),
            "K": list(self.K),
            "velocities": list(self.velocities),
            "diffusions": list(self.diffusions),
            "sources": list(self.sources),
            "inits": list(self.inits),
            **({"widths": list(self.widths)} if self.widths else {}),  # absent without width: older studies resume
            **({"depth": False} if not self.depth else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        runs = tuple(
            RunSpace(
                path=r["path"],
                r=int(r["r"]),
                channels=int(r["channels"]),
                shape=tuple(r["shape"]),
                block_class=r.get("block_class", ""),
            )
            for r in data["runs"]
        )
        return cls(
            runs=runs,
            layers=tuple(data["layers"]),
            K=tuple(data["K"]),
            velocities=tuple(data["velocities"]),
            diffusions=tuple(data["diffusions"]),
            sources=tuple(data["sources"]),
            inits=tuple(data["inits"]),
            widths=tuple(data.get("widths", ())),
            depth=bool(data.get("depth", True)),
        )

    def table(self, title: str | None = None):
        """A rich Table of the parameters (what ``--show-space`` prints)."""
        table = Table("parameter", "values", "shared by", "meaning", title=title, title_justify="left")
        for p in self.params:
            table.add_row(*(escape(x) for x in (p.name, p.describe(), p.scope, p.meaning)))
        return table

    def summary(self) -> str:
        n_on = len(self.runs)
        if not self.depth:
            return (
                f"{len(self.params)} parameters: the width of each of {n_on} run(s), every block kept; "
                f"{self.size:.3g} points"
            )
        per_run = 2 + self.drop_per_run + bool(self.widths)
        return (
            f"{len(self.params)} parameters: 6 shared by the whole model, {per_run} per run x {n_on} run(s); "
            f"{self.size:.3g} points"
        )


def build_space(
    found: Any,
    *,
    layers: Sequence[str] | None = None,
    K: Sequence[int] | None = None,
    velocities: Iterable[str] | None = None,
    diffusions: Iterable[str] | None = None,
    sources: Iterable[str] | None = None,
    inits: Iterable[str] | None = None,
    widths: Iterable[float] | None = None,
    depth: bool = True,
) -> SearchSpace:
    """The space for the runs of ``found`` (a ``condense.FindResult``), growing runs included; a run of a
    single block cannot be condensed and is left out. Keywords narrow the shared choices; ``widths`` adds
    ``width[PATH]`` per run (0 or one of these shares); ``depth=False`` leaves only those (width alone)."""
    runs = tuple(
        RunSpace(path=r.path, r=r.r, channels=r.channels, shape=tuple(r.input_shape), block_class=r.block_class)
        for r in found.runs
        if r.r >= 2
    )
    kw: dict[str, Any] = {}
    if layers is not None:
        kw["layers"] = tuple(layers)
    if K is not None:
        kw["K"] = (int(K[0]), int(K[1]))
    for name, value in (
        ("velocities", velocities),
        ("diffusions", diffusions),
        ("sources", sources),
        ("inits", inits),
        ("widths", widths),
    ):
        if value is not None:
            kw[name] = tuple(value)
    return SearchSpace(runs=runs, depth=depth, **kw)
