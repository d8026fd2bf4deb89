"""Budget search for condense: which runs to condense, how many blocks to keep, which layer, which K.

Public API (everything else is private)::

    run_search("timm:resnet18", "cifar10:PATH", macs="1G", trials=40, epochs_per_trial=1, output=DIR)
                                        -> SearchResult(study, space, trials, front, reference, output, files)
    SearchConfig                        every option of a search (run_search's keywords)
    SearchSpace, build_space(found)     the space, declared once; .table() is what --show-space prints
    open_study(config), study_from_dir(DIR)   the Optuna study (journal file or database), created or resumed
    recover_stale_trials(study, grace)  journal storage: fail dead RUNNING trials and queue them again
    trials_frame(study, space), front_frame(...)   every trial / the Pareto front as DataFrames
    write_csv(df, path), front_table(front)        CSV, rich Table
    plot_front(trials, "front.png", reference=...) accuracy vs MACs (matplotlib)
    compare_studies([DIR, DIR]), hypervolume(points, ref)   fronts of several searches side by side
    latency_fronts([DIR, DIR], batches=(1, 32))   their front members re-timed with the original in one run
    plot_fronts({name: trials}, "fronts.png")               ... and in one plot
    run_supernet_search(MODEL, DATA, supernet=SupernetOptions(epochs=5), ...)   train one supernet, score plans
    supernet(model, input_size=..., layers=..., K=...)   condense.supernet over this search's space
    run_search(..., finish=FinishConfig(top=3, epochs=10))   fine-tune 3 front members -> result.finished
    kendall_tau(a, b)                   rank agreement (the search's scores vs the finished accuracies)
    export_trial(DIR, N, OUT)           a trial's trained model as a directory condense.load reads
    search_main(argv), export_main(argv), compare_main(argv)   `condense search` / `export` / `compare`

Objectives: accuracy after a short proxy training (maximise), MACs and parameters (minimise), optionally
measured latency; or accuracy and measured latency alone (``objective="latency"``). With ``widths`` the space
also holds a channel share per run (``width[PATH]``, pruned with Torch-Pruning; per-trial strategy only).
Budgets are hard constraints (``trial.set_constraint``): an over-budget plan is counted, never trained,
and never on the front. Sampler: NSGA-II (or TPE, or random as a baseline), seeded per trial number.
"""

from ._cli import compare_main, export_main, search_main
from ._compare import compare_studies, hypervolume, latency_fronts
from ._config import SearchConfig, load_config
from ._export import ExportResult, export_trial
from ._finish import FinishConfig, FinishResult, finish_front, kendall_tau
from ._objective import Objective, build_plan, measure_latency
from ._pareto import front_frame, front_table, trials_frame, write_csv
from ._plot import plot_front, plot_fronts
from ._space import Param, RunSpace, SearchSpace, build_space
from ._storage import open_study, study_from_dir
from ._study import SearchResult, run_search
from ._supernet import SupernetObjective, SupernetOptions, run_supernet_search, supernet
from ._workers import recover_stale_trials

__all__ = [
    "run_search",
    "SearchConfig",
    "SearchResult",
    "run_supernet_search",
    "SupernetOptions",
    "SupernetObjective",
    "supernet",
    "SearchSpace",
    "RunSpace",
    "Param",
    "build_space",
    "open_study",
    "study_from_dir",
    "load_config",
    "recover_stale_trials",
    "Objective",
    "build_plan",
    "measure_latency",
    "trials_frame",
    "front_frame",
    "write_csv",
    "front_table",
    "plot_front",
    "plot_fronts",
    "compare_studies",
    "hypervolume",
    "latency_fronts",
    "export_trial",
    "ExportResult",
    "FinishConfig",
    "FinishResult",
    "finish_front",
    "kendall_tau",
    "search_main",
    "export_main",
    "compare_main",
]
