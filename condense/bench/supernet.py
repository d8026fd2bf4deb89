"""Benchmark: how well the supernet and the per-trial proxy rank plans, against plans trained standalone.

Run ``python -m condense.bench.supernet MODEL --data SPEC [--checkpoint FILE] [--budget 70%] [--plans 16]
[--seeds 3] [--epochs 10] [--supernet-epochs 8] -o DIR``. In one run it:

1. draws plans of the search space within the MAC budget (seeded, spread evenly over their MACs);
2. trains each plan standalone for ``--epochs`` epochs with ``--seeds`` seeds (the ground truth; a seed
   varies the new layers' initial weights and the data order, as in the search);
3. trains each plan for ``--proxy-epochs`` from the original (with ``--checkpoint``: its trained weights), as
   a ``--strategy trials`` search trial does (seed 0);
4. trains a supernet for ``--supernet-epochs`` as ``--strategy supernet`` does (or loads ``--supernet
   STUDY_DIR``'s) and scores every plan with its weights (BatchNorm re-estimated on 256 training images);
5. prints Kendall's tau of each predictor against the seed mean, and against the mean of the seeds other
   than 0 (the proxy shares seed 0 with the first ground-truth run), with the CPU seconds each took, and the
   standard deviation of tau for a random ranking of that many plans.

Every figure goes to ``DIR/rank.json`` as it is measured; running the command again with the same options
continues where it stopped. Nothing here asserts: it prints what it measured. One thread by default.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from optuna.distributions import IntDistribution

import condense  # condense.train.train and condense.train_supernet are looked up when called: tests patch them
from search import build_plan, build_space, kendall_tau

from .. import (
    CondenseError,
    PlanCosts,
    SandwichConfig,
    Supernet,
    TrainConfig,
    calibration_batches,
    find_runs,
    load_data,
    load_supernet_weights,
    macs_and_params,
    parse_budget,
    recalibrate_bn,
    report_error,
    resolve_model,
)
from .._help import HelpFormatter
from ..train import evaluate


def pick_plans(net, original, found, size, n: int, macs_budget: float, seed: int = 0) -> list:
    """``n`` distinct plans of ``net``'s space within ``macs_budget``, evenly spread over the MACs of a pool
    of up to 3n random feasible plans (seeded; ``_draw``)."""
    costs, totals = PlanCosts(original, found), macs_and_params(original, size)
    rng, pool, seen = random.Random(seed), [], set()
    for _ in range(200 * n):
        if len(pool) >= 3 * n:
            break
        plan = _draw(net.space, rng)
        key = json.dumps(plan.to_dict(), sort_keys=True, default=str)
        if not plan.choices or key in seen:
            continue
        seen.add(key)
        guess = costs.estimate(totals, plan.choices)
        if guess is not None and guess[0] > 1.05 * macs_budget:  # far over by the estimate: not built
            continue
        macs = macs_and_params(build_plan(original, found, plan, 0), size)[0]
        if macs <= macs_budget:
            pool.append((macs, key, plan))
    pool.sort(key=lambda t: (t[0], t[1]))
    if len(pool) <= n:
        return [p for _, _, p in pool]
    return [pool[round(i * (len(pool) - 1) / (n - 1))][2] for i in range(n)] if n > 1 else [pool[-1][2]]


def _draw(space, rng: random.Random):
    """A random plan of ``space`` that condenses each run with probability 0.8 (a uniform draw leaves half the
    runs alone and rarely fits a tight budget)."""
    params = {}
    for p in space.params:
        d = p.distribution
        params[p.name] = rng.randint(d.low, d.high) if isinstance(d, IntDistribution) else rng.choice(list(d.choices))
    for run in space.runs:
        params[space.on_name(run)] = rng.random() < 0.8
    return space.plan(params)


def random_tau_sd(n: int) -> float:
    """Standard deviation of Kendall's tau between a random ranking and any other, for n items."""
    return math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))) if n > 1 else float("nan")


def _label(plan) -> str:
    c = next(iter(plan.choices.values()))
    ms = ",".join(f"{p}:{ch.m}" for p, ch in sorted(plan.choices.items()))
    return f"{c.layer} K={c.options.get('K')} {c.init} m[{ms}]"


def run(args) -> dict[str, Any]:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rank.json"
    options = {k: v for k, v in vars(args).items() if k not in ("output", "threads", "debug")}
    state = json.loads(path.read_text()) if path.is_file() else {}
    if state and state.get("options") != options:
        raise CondenseError(f"{path} was measured with other options", "use another -o DIR, or the same options")
    state["options"] = options
    results: dict[str, dict[str, Any]] = state.setdefault("results", {})

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=str))
        tmp.replace(path)

    bundle = load_data(args.data, limit_train=args.limit_train, limit_test=args.limit_test, input_size=args.input_size)

    def build_original(checkpoint):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return resolve_model(args.model, checkpoint=checkpoint, num_classes=bundle.num_classes).model

    scratch, start = build_original(None), build_original(args.checkpoint)
    size = tuple(bundle.input_size)
    found = find_runs(start, size)
    space = build_space(found)
    macs0 = macs_and_params(start, size)[0]
    budget = parse_budget(args.budget).resolve(macs0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Supernet(start, found, space)
    plans = pick_plans(net, start, found, size, args.plans, budget, seed=args.plan_seed)
    labels = [_label(p) for p in plans]
    state["plans"] = [{"label": lab, "plan": p.to_dict()} for lab, p in zip(labels, plans)]

    def measure(key: str, label: str, fn) -> float:
        row = results.setdefault(label, {})
        if key not in row:
            c0 = time.process_time()
            row[key] = float(fn())
            row[key + "_cpu"] = round(time.process_time() - c0, 2)
            save()
            print(f"  {key:>12s} {row[key]:.4f}  ({row[key + '_cpu']:.0f} CPU s)  {label}", flush=True)
        return row[key]

    def fit(plan, original, epochs: int, seed: int) -> float:
        model = build_plan(original, found, plan, seed)
        cfg = TrainConfig(
            epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, max_steps_per_epoch=args.steps_per_epoch
        )
        return condense.train.train(model, bundle, cfg, progress=False, device="cpu").metrics["test_acc"]

    print(f"{len(plans)} plans within {args.budget} of {macs0 / 1e6:.2f}M MACs", flush=True)
    # the supernet first (one training), then the cheap proxies, then the long ground truth
    sn_key = "supernet"
    if any(sn_key not in results.get(lab, {}) for lab in labels):
        ckpt = Path(args.supernet) / "supernet" / "last.pt" if args.supernet else out / "supernet" / "last.pt"
        if args.supernet is None and not (ckpt.is_file() and state.get("supernet_trained")):
            c0 = time.process_time()
            cfg = TrainConfig(
                epochs=args.supernet_epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=0,
                max_steps_per_epoch=args.steps_per_epoch,
                clip_grad_norm=5.0,
            )
            condense.train_supernet(
                net,
                bundle,
                cfg,
                SandwichConfig(),
                out_dir=out / "supernet",
                resume=ckpt.is_file(),
                progress=True,
                device="cpu",
            )
            state["supernet_cpu"] = round(time.process_time() - c0, 1)
            state["supernet_trained"] = True
            save()
        load_supernet_weights(net, ckpt)
        net.eval()
        calib = calibration_batches(bundle, 256, 64, 0)
        for plan, lab in zip(plans, labels):

            def score(plan=plan):
                model = net.extract(plan)
                recalibrate_bn(model, calib)
                return evaluate(model, bundle)["test_acc"]

            measure(sn_key, lab, score)
    for plan, lab in zip(plans, labels):
        measure("proxy", lab, lambda plan=plan: fit(plan, start, args.proxy_epochs, 0))
    for seed in range(args.seeds):
        for plan, lab in zip(plans, labels):
            measure(f"seed{seed}", lab, lambda plan=plan, seed=seed: fit(plan, scratch, args.epochs, seed))
    report(state, labels, kendall_tau)
    save()
    return state


def report(state: dict[str, Any], labels: list[str], kendall_tau) -> dict[str, Any]:
    res, opts = state["results"], state["options"]
    seeds = [f"seed{s}" for s in range(opts["seeds"])]
    gt = [statistics.mean(res[lab][s] for s in seeds) for lab in labels]
    rest = [statistics.mean(res[lab][s] for s in seeds[1:]) for lab in labels] if len(seeds) > 1 else None
    print(f"\n{'plan':60s} " + " ".join(f"{s:>7s}" for s in seeds) + f" {'mean':>7s} {'proxy':>7s} {'supernet':>8s}")
    for lab, g in zip(labels, gt):
        r = res[lab]
        print(
            f"{lab[:60]:60s} " + " ".join(f"{r[s]:7.4f}" for s in seeds) + f" {g:7.4f} {r['proxy']:7.4f}"
            f" {r['supernet']:8.4f}"
        )
    summary: dict[str, Any] = {"plans": len(labels), "random_tau_sd": random_tau_sd(len(labels))}
    pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
    summary["seed_pair_taus"] = {
        f"{a},{b}": kendall_tau([res[lab][a] for lab in labels], [res[lab][b] for lab in labels]) for a, b in pairs
    }
    cpu_sn = state.get("supernet_cpu")
    print(f"\nKendall tau over {len(labels)} plans (a random ranking: std {summary['random_tau_sd']:.2f})")
    if pairs:
        print(
            "  single seeds against each other: "
            + ", ".join(f"{k} {v:.2f}" for k, v in summary["seed_pair_taus"].items())
        )
    for key, what in (
        ("proxy", f"per-trial proxy ({opts['proxy_epochs']} epoch(s))"),
        ("supernet", f"supernet ({opts['supernet_epochs']} epochs)"),
    ):
        vals = [res[lab][key] for lab in labels]
        cpu = sum(res[lab][key + "_cpu"] for lab in labels)
        t_all, t_rest = kendall_tau(vals, gt), kendall_tau(vals, rest) if rest else float("nan")
        summary[key] = {"tau_mean": t_all, "tau_without_seed0": t_rest, "cpu_s": cpu}
        extra = f" + {cpu_sn:.0f} s training" if key == "supernet" and cpu_sn else ""
        print(
            f"  {what:32s} tau vs seed mean {t_all:5.2f}, vs seeds 1+ {t_rest:5.2f}  "
            f"({cpu:.0f} CPU s for the plans{extra})"
        )
    state["summary"] = summary
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m condense.bench.supernet", formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0]
    )
    p.add_argument("model", metavar="MODEL", help="timm:NAME or zoo:NAME")
    p.add_argument("--data", required=True, metavar="SPEC", help="cifar10:PATH, mnist:PATH, ...")
    p.add_argument("--limit-train", type=int, default=None, help="use N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use N test images")
    p.add_argument("--input-size", metavar="CxHxW", default=None, help="resize the data to this")
    p.add_argument("--checkpoint", default=None, help="trained weights of MODEL (the proxy and supernet start there)")
    p.add_argument("--budget", default="70%", help="MAC budget of the plans")
    p.add_argument("--plans", type=int, default=16, help="plans to rank")
    p.add_argument("--plan-seed", type=int, default=0, help="seed of the plan draw")
    p.add_argument("--seeds", type=int, default=3, help="standalone trainings per plan (the ground truth)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each standalone training")
    p.add_argument("--proxy-epochs", type=int, default=1, help="epochs of the per-trial proxy")
    p.add_argument("--supernet-epochs", type=int, default=8, help="epochs of the supernet")
    p.add_argument(
        "--supernet",
        metavar="STUDY_DIR",
        default=None,
        help="score with this supernet search's supernet instead of training one",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of every training")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="at most N steps per epoch")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("-o", "--output", default="bench-supernet", help="where rank.json (and the supernet) go")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.plans < 2 or args.seeds < 1:
        p.error("--plans must be >= 2 and --seeds >= 1")
    torch.set_num_threads(args.threads)
    try:
        run(args)
    except Exception as err:  # noqa: BLE001 - one line unless --debug
        return report_error(err, debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
