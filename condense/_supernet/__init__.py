"""The weight-sharing supernet: every plan of a model's search space in one module, trained once.

``_net``: the network (``Supernet``, ``supernet(model, input_size=..., space=...)``: the space is built by the
caller, ``search.build_space``; ``select``, ``extract``, ``export_plan``, ``load_supernet_weights``, the
explicit RD layers' stability bound ``stabilize_``). ``_train``: its trainer (``train_supernet``, the sandwich
rule, ``SandwichConfig``; the run setup is ``condense.train.prepare_run``, shared with ``train``) and
``score_plan``. The search's supernet strategy (``search/_supernet.py``) uses these through ``condense``.
"""

from .._bn import calibration_batches, recalibrate_bn
from ._net import STABLE_H_LAMBDA, SUPERNET_FILE, Supernet, export_plan, load_supernet_weights, stabilize_, supernet
from ._train import SandwichConfig, plan_label, score_plan, step_plans, train_supernet

__all__ = [
    "Supernet",
    "SandwichConfig",
    "supernet",
    "train_supernet",
    "score_plan",
    "step_plans",
    "plan_label",
    "recalibrate_bn",
    "calibration_batches",
    "load_supernet_weights",
    "export_plan",
    "stabilize_",
    "SUPERNET_FILE",
    "STABLE_H_LAMBDA",
]
