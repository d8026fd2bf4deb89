"""The weight-sharing supernet: a selected path computes what the exported model computes, sandwich training
trains every sampled path (and nothing else), export/load round trip, resume equals an uninterrupted run,
and ``condense search --strategy supernet`` end to end (train, score, front, export, resume).

Everything runs on ``zoo:resnet_tiny`` at 3x16x16 and a tiny MNIST-format npz (resized, grey repeated).
"""

import math
import random

import pandas as pd
import pytest
import torch

import condense
import condense.train as train_module
import search
from condense import Plan, RunChoice, TrainConfig
from condense._supernet import SandwichConfig, export_plan, recalibrate_bn, step_plans, train_supernet
from condense.data import load_data
from conftest import tiny_mnist
from condense.pde import DIFFUSIONS, SOURCES, VELOCITIES, layer_names

SIZE = (3, 16, 16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("supernet")
    tiny_mnist(d / "mnist.npz", n_train=128, n_test=64)
    return {"spec": f"mnist:{d / 'mnist.npz'}", "dir": d}


def _net(seed=0):
    torch.manual_seed(seed)
    model = condense.build_model("zoo:resnet_tiny")
    return model, search.supernet(model, input_size=SIZE)


@pytest.fixture(scope="module")
def built():
    return _net()


def _plans(net):
    """Plans covering every layer type, every Global option value, both inits, several K and m."""
    runs = [r.path for r in net.runs]
    plans = [net.largest_plan(), net.smallest_plan(random.Random(0))]
    for i, layer in enumerate(layer_names()):
        plans.append(
            Plan(
                {
                    runs[i % len(runs)]: RunChoice(
                        m=1 + i % 2,
                        layer=layer,
                        options={"K": 1 + 4 * i} if layer != "drop" else {},
                        init=("block", "input")[i % 2],
                    )
                }
            )
        )
    for i, (v, d, s) in enumerate(zip(VELOCITIES, DIFFUSIONS * 2, SOURCES + SOURCES[:1])):
        plans.append(
            Plan(
                {
                    p: RunChoice(
                        m=2 - i % 2,
                        layer="global",
                        init=("input", "block")[i % 2],
                        options={"K": 20 - i, "velocity": v, "diffusion": d, "source": s},
                    )
                    for p in runs[i % 2 :: 2]
                }
            )
        )
    rng = random.Random(3)
    plans += [net.random_plan(rng) for _ in range(4)]
    return plans


def test_selected_path_computes_exactly_what_the_exported_model_computes(built):
    model, net = built
    net = __import__("copy").deepcopy(net)
    with torch.no_grad():  # weights unlike their initialisation (zero fields would hide mistakes)
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(4, *SIZE, generator=torch.Generator().manual_seed(2))
    calib = [torch.randn(8, *SIZE, generator=torch.Generator().manual_seed(3 + i)) for i in range(2)]
    for plan in _plans(net):
        net.select(plan)
        recalibrate_bn(net, calib)
        with torch.no_grad():
            a = net(x)
        standalone = net.extract(plan).eval()
        with torch.no_grad():
            b = standalone(x)
        assert torch.equal(a, b), plan
        # the standalone model's own re-estimated statistics are the same: scoring may use either
        recalibrate_bn(standalone, calib)
        with torch.no_grad():
            assert torch.equal(standalone(x), a), plan
    # the largest plan is the original model
    net.select(net.largest_plan()).eval()
    with net.unwrapped() as base:
        ref = __import__("copy").deepcopy(base).eval()
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))


TIMM = [
    ("mobilenetv2_100", {}, (3, 32, 32)),  # inverted residuals
    ("rexnet_100", {}, (3, 32, 32)),  # growing runs (GrowingTail)
    (
        "swin_tiny_patch4_window7_224",
        dict(img_size=64, window_size=4, embed_dim=16, depths=(2, 4, 2), num_heads=(1, 2, 4)),
        (3, 64, 64),
    ),
]  # channels-last (NHWC) runs


@pytest.mark.parametrize("name,kwargs,size", TIMM, ids=[t[0].split("_")[0] for t in TIMM])
def test_timm_selected_path_computes_exactly_what_the_exported_model_computes(name, kwargs, size):
    """As above on timm models, with a train-mode forward between two eval-mode ones, as sandwich training
    between scorings: a BatchNorm folded into its conv in eval mode (``ConvNormAct``: the Global layer's
    velocity and diffusion nets, a growing tail's projection) was cached past the running statistics the
    train-mode forward moved (BatchNorm does not bump their version counters), so the path computed with
    stale statistics and its standalone model with the current ones."""
    import timm

    torch.manual_seed(0)
    net = search.supernet(
        timm.create_model(name, pretrained=False, num_classes=10, **kwargs), input_size=size, K=(1, 4)
    )
    with torch.no_grad():  # candidate layers unlike their (partly zero) initialisation
        g = torch.Generator().manual_seed(1)
        for p in net.candidates.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x, xt = (torch.randn(n, *size, generator=torch.Generator().manual_seed(n)) for n in (2, 4))
    runs = [r.path for r in net.runs]
    plans = [
        net.smallest_plan(random.Random(0)),
        net.random_plan(random.Random(1)),
        Plan(
            {
                p: RunChoice(
                    m=1,
                    layer="global",
                    init="block",
                    options={"K": 3, "velocity": "separable", "diffusion": "dwconv", "source": "residual"},
                )
                for p in runs
            }
        ),
        Plan(
            {
                p: RunChoice(m=r.r - 1, layer="implicit_rd", init="input", options={"K": 2})
                for p, r in zip(runs, net.runs)
            }
        ),
    ]
    for plan in plans:
        net.select(plan).eval()
        with torch.no_grad():
            net(x)
            net.train()(xt)  # moves this path's BatchNorm statistics
            a = net.eval()(x)
            standalone = net.extract(plan).eval()
            assert torch.equal(a, standalone(x)), plan
            with torch.random.fork_rng(devices=[]):  # train mode too (drop-path draws the same numbers)
                torch.manual_seed(7)
                a = net.train()(xt)
                torch.manual_seed(7)
                assert torch.equal(a, standalone.train()(xt)), plan


def test_candidate_layers_are_shared_and_K_is_elastic(built):
    model, net = built
    cands = net.candidates["run0"]
    a, b = cands["global-dwconv-constant-identity"], cands["global-dwconv-dwconv-residual"]
    assert a.velocity is b.velocity  # one velocity net per kind, shared
    assert cands["global-separable-dwconv-none"].diffusion is b.diffusion
    assert cands["global-zero-constant-residual"].source is b.source
    assert len({id(p) for p in net.parameters()}) == sum(1 for _ in net.parameters())
    plan = Plan({"layer1": RunChoice(m=1, layer="explicit_rd", options={"K": 3}, init="input")})
    layer = net.extract(plan).get_submodule("layer1.1")
    assert layer.config.K == 3 and len(layer.norms) == 3 and len(cands["explicit_rd"].norms) == net.K_max
    mem = net.memory()
    assert mem["supernet_bytes"] > mem["original_bytes"] > 0
    with pytest.raises(condense.CondenseError, match="K=21"):
        net.select(Plan({"layer1": RunChoice(m=1, layer="global", options={"K": 21})}))
    with pytest.raises(condense.CondenseError, match="dt"):
        net.select(Plan({"layer1": RunChoice(m=1, layer="global", options={"K": 2, "dt": 0.1})}))


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_sandwich_step_trains_every_sampled_path_and_nothing_else(data):
    model, net = _net()
    bundle = load_data(data["spec"], input_size="3x16x16", limit_test=32)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, max_steps_per_epoch=1, weight_decay=0.0)
    sandwich = SandwichConfig(random_plans=2, eval_each_epoch=False)
    plans = step_plans(net, sandwich, cfg.seed, 0, 0)
    before = {id(p): p.detach().clone() for p in net.parameters()}
    train_supernet(net, bundle, cfg, sandwich, progress=False, device="cpu")
    changed = {id(p) for p in net.parameters() if not torch.equal(p, before[id(p)])}
    used = set()
    for plan in plans:
        net.select(plan)
        path_params = set()
        for i, run in enumerate(net.runs):
            state = net._states[i]
            if state.layer is not None:
                ids = {id(p) for p in state.layer.parameters()}
                assert ids & changed or not ids, (run.path, plan)  # the sampled layer was trained (drop: none)
                path_params |= ids
        used |= path_params
        # the path's kept blocks (and everything outside the runs) were trained as well
        assert {id(p) for p in net.net.parameters()} & changed
    unused = {id(p) for p in net.candidates.parameters()} - used
    assert unused and not (unused & changed)  # candidates no plan used: untouched
    assert len(plans) == 4 and not plans[0].choices  # largest (the original), smallest, 2 random
    assert all(c.m == 1 for c in plans[1].choices.values()) and len(plans[1].choices) == len(net.runs)
    # the smallest plan starts its layers from the input (init=block would still run block m), at the lowest K
    smallest = [net.smallest_plan(random.Random(s)) for s in range(6)]
    assert all(
        c.init == "input" and c.options.get("K", net.space.K[0]) == net.space.K[0]  # drop: no K
        for p in smallest
        for c in p.choices.values()
    )


def test_export_and_load_round_trip(tmp_path, built):
    model, net = built
    plan = Plan(
        {
            "layer2": RunChoice(
                m=1,
                layer="global",
                options={"K": 4, "velocity": "dwconv", "diffusion": "dwconv", "source": "identity"},
                init="block",
            ),
            "layer3": RunChoice(m=2, layer="implicit_rd", options={"K": 2}, init="input"),
        }
    )
    net.select(plan)
    recalibrate_bn(net, [torch.randn(8, *SIZE)])
    standalone = net.extract(plan).eval()
    out = export_plan(net, plan, tmp_path / "exported", spec="zoo:resnet_tiny", model=standalone)
    again = condense.load(out)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(again(x), standalone(x))
    meta = condense.read_meta(out)
    assert meta["plan"] == plan.to_dict()
    assert meta["counts"]["macs_after"] < meta["counts"]["macs_before"]


def _run(out, bundle, interrupt=False, monkeypatch=None):
    model, net = _net()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, max_steps_per_epoch=2, clip_grad_norm=5.0)
    sandwich = SandwichConfig(random_plans=1, calib_images=16, calib_batch=16)
    if interrupt:
        real = train_module._atomic_save

        def save_then_die(obj, path):
            real(obj, path)
            raise KeyboardInterrupt

        monkeypatch.setattr(train_module, "_atomic_save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_supernet(net, bundle, cfg, sandwich, out_dir=out, progress=False, device="cpu")
        monkeypatch.setattr(train_module, "_atomic_save", real)
        model, net = _net(seed=5)  # a fresh process: other initial weights, all replaced by the checkpoint
        torch.manual_seed(123)  # ... and another global random state, restored from the checkpoint
        res = train_supernet(net, bundle, cfg, sandwich, out_dir=out, resume=True, progress=False, device="cpu")
    else:
        res = train_supernet(net, bundle, cfg, sandwich, out_dir=out, progress=False, device="cpu")
    return net, res


def test_resume_of_an_interrupted_training_equals_an_uninterrupted_one(tmp_path, data, monkeypatch):
    bundle = load_data(data["spec"], input_size="3x16x16", limit_test=32)
    full, res_full = _run(tmp_path / "full", bundle)
    again, res_again = _run(tmp_path / "cut", bundle, interrupt=True, monkeypatch=monkeypatch)
    a, b = full.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in res_full.history] == [h["train_loss"] for h in res_again.history]
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["world_size"] == 1
    with pytest.raises(condense.CondenseError, match="already holds"):
        train_supernet(
            _net()[1],
            bundle,
            TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=2),
            out_dir=tmp_path / "full",
            progress=False,
            device="cpu",
        )


def test_search_strategy_supernet_end_to_end(tmp_path, data, capsys):
    from search import export_main, search_main
    from search._study import study_from_dir

    out = tmp_path / "study"
    argv = [
        "zoo:resnet_tiny",
        "--data",
        data["spec"],
        "--input-size",
        "3x16x16",
        "--strategy",
        "supernet",
        "--supernet-epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "16",
        "--limit-test",
        "32",
        "--calib-images",
        "16",
        "--random-plans",
        "1",
        "--trials",
        "3",
        "--population",
        "4",
        "--budget",
        "80%",
        "--finish",
        "1",
        "--finish-epochs",
        "1",
        "--no-progress",
        "-o",
        str(out),
    ]
    assert search_main(argv) == 0
    assert (out / "supernet" / "last.pt").is_file() and (out / "front.csv").is_file()
    finished = pd.read_csv(out / "finished.csv")  # the most accurate member, fine-tuned from the supernet's weights
    front = pd.read_csv(out / "front.csv")
    assert list(finished["trial"]) == [int(front.loc[front["accuracy"].idxmax(), "trial"])]
    assert condense.load(out / "finished" / str(finished["trial"][0]) / "model") is not None
    study, _ = study_from_dir(out)
    scored = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    assert len(scored) >= 3 and all(t.user_attrs["strategy"] == "supernet" for t in scored)
    assert all(t.user_attrs["macs"] <= 0.8 * study.user_attrs["condense:reference"]["macs"] * 1.0000001 for t in scored)
    n = scored[0].number
    assert export_main([str(out), "--trial", str(n), "-o", str(tmp_path / "t")]) == 0
    loaded = condense.load(tmp_path / "t")
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), condense.load(out / "trials" / str(n))(x))
    # the same command again: the supernet is not retrained, the study is already complete
    mtime = (out / "supernet" / "last.pt").stat().st_mtime_ns
    assert search_main(argv) == 0
    assert (out / "supernet" / "last.pt").stat().st_mtime_ns == mtime
    assert len([t for t in study_from_dir(out)[0].trials if t.user_attrs.get("status") == "trained"]) == len(scored)
    # other supernet options on the same study are refused
    assert search_main(argv[:-2] + ["--random-plans", "2", "-o", str(out)]) == 1
    assert "other supernet options" in capsys.readouterr().err


def _rd_paths(net):
    """Every explicit RD path at the largest K (m = 1 in every run), both initial guesses."""
    runs = [r.path for r in net.runs]
    return [
        Plan({p: RunChoice(m=1, layer=layer, options={"K": net.K_max}, init=init) for p in runs})
        for layer in ("explicit_rd", "circulant_rd")
        for init in ("input", "block")
    ]


def test_sandwich_training_keeps_explicit_rd_paths_stable(data):
    """Explicit RD steps are stable only for h * lambda_max(K^T K) <= 2; unbounded, a few summed sandwich
    steps grew the stencils until K = 20 steps multiplied the map by 1e5..1e20 (distillation losses of
    1e9-1e21 on CIFAR-10). Training keeps every stencil inside and every path's loss finite and small."""
    from condense._supernet._net import STABLE_H_LAMBDA, _symbol_max2
    from condense._supernet._train import _soft_ce

    torch.manual_seed(0)
    model = condense.build_model("zoo:resnet_tiny")
    net = search.supernet(model, input_size=SIZE, layers=("explicit_rd", "circulant_rd"), K=(18, 20))
    bundle = load_data(data["spec"], input_size="3x16x16", limit_test=32)
    with torch.no_grad():  # start outside the stability region, as trained stencils end up
        for cands in net.candidates.values():
            for layer in cands.values():
                layer.diffusion.mul_(6.0)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.2, max_steps_per_epoch=3, clip_grad_norm=5.0)
    res = train_supernet(
        net, bundle, cfg, SandwichConfig(random_plans=2, eval_each_epoch=False), progress=False, device="cpu"
    )
    assert all(h["skipped"] == 0 for h in res.history)  # stable paths: nothing had to be skipped
    assert all(math.isfinite(h["distill_loss"]) and h["distill_loss"] < 10 for h in res.history)
    for cands in net.candidates.values():
        for layer in cands.values():
            w = layer.diffusion if layer.diffusion.dim() == 4 else layer.diffusion[:, :, 0]
            lam = _symbol_max2(w, layer.diffusion.dim() == 4) * layer.config.h
            assert float(lam.max()) <= STABLE_H_LAMBDA * (1 + 1e-5)
    x = next(iter(bundle.loader("train", 32, shuffle=False, augment=False)))[0]
    net.train()
    with torch.no_grad():
        target = net.select(net.largest_plan())(x)
        for plan in _rd_paths(net):
            logits = net.select(plan)(x)
            loss = float(_soft_ce(logits, target, 1.0))
            assert math.isfinite(loss) and loss < 10 * math.log(10), (plan, loss)
            assert float(logits.abs().max()) < 1e3, plan


def test_blown_up_plans_are_skipped_and_the_small_plans_are_averaged(data):
    """A drawn plan whose distillation loss is above skip_loss x ln(classes) gets no gradient; with every
    drawn plan skipped only the largest plan (the original) trains and no candidate layer moves."""
    model, net = _net()
    bundle = load_data(data["spec"], input_size="3x16x16", limit_test=32)
    before = {k: v.detach().clone() for k, v in net.candidates.named_parameters()}
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, max_steps_per_epoch=2, clip_grad_norm=5.0)
    res = train_supernet(
        net,
        bundle,
        cfg,
        SandwichConfig(random_plans=2, eval_each_epoch=False, skip_loss=1e-6),
        progress=False,
        device="cpu",
    )
    assert res.history[0]["skipped"] == 2 * 3 and sum(res.history[0]["skipped_plans"].values()) == 6
    after = dict(net.candidates.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # (their BatchNorm statistics may move)
    # no random draw is the largest plan again (it would distil the largest plan into itself)
    sandwich = SandwichConfig(random_plans=8)
    assert all(p.choices for e in range(3) for s in range(20) for p in step_plans(net, sandwich, 0, e, s)[1:])
    with pytest.raises(condense.ConfigError, match="distill_weight"):
        SandwichConfig(distill_weight=0)


# --- torchrun: gradients averaged by hand over 2 gloo ranks -------------------------------------------------

DDP_CFG = TrainConfig(epochs=2, batch_size=16, lr=0.05, max_steps_per_epoch=2, clip_grad_norm=5.0)
DDP_SANDWICH = SandwichConfig(random_plans=1, calib_images=16, calib_batch=16)


def _ddp_net(seed):
    torch.manual_seed(seed)
    return search.supernet(
        condense.build_model("zoo:resnet_tiny"), input_size=SIZE, layers=("linearmix", "implicit_rd"), K=(1, 4)
    )


DDP_SCRIPT = r"""
import copy, json, math, os, sys, types, torch, torch.distributed as dist
torch.set_num_threads(1)
# the repository first (its search package, not the namespace tests/search), then the tests (conftest)
sys.path[:0] = [os.path.dirname(os.path.abspath(sys.argv[3])), sys.argv[3]]
from test_supernet import DDP_CFG, DDP_SANDWICH, _ddp_net
import condense, condense._supernet._train as sn, condense.train as train_module
from condense import TrainConfig
from condense._supernet import SandwichConfig, train_supernet
from condense.data import load_data

dist.init_process_group("gloo")
rank, out = dist.get_rank(), sys.argv[2]
bundle = load_data(sys.argv[1], input_size="3x16x16", limit_test=32)

def vec(net, params_only=False):
    tensors = net.parameters() if params_only else net.state_dict().values()
    return torch.cat([t.detach().double().flatten() for t in tensors])

def gather(t):
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out

def figures(history):  # the history without the timings (each rank's own clock)
    return [{k: v for k, v in h.items() if k not in ("epoch_seconds", "images_per_s")} for h in history]

def gather_object(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

report = {}
# 1. one step from other initial weights on each rank (rank 0's broadcast), SGD without weight decay: the
# update is -lr x the ranks' mean gradient, i.e. the mean of the updates of a control run whose all-reduce
# is switched off (each rank steps on its own shard's gradient, and the replicas drift apart)
cfg1, sw1 = TrainConfig(epochs=1, batch_size=16, lr=0.05, max_steps_per_epoch=1, clip_grad_norm=5.0,
                        weight_decay=0.0), SandwichConfig(random_plans=1, eval_each_epoch=False)
net = _ddp_net(seed=10 + rank)
init = gather(vec(net, True))
twin = copy.deepcopy(net)
train_supernet(net, bundle, cfg1, sw1, progress=False, device="cpu")
averaged = gather(vec(net, True))
buffers_same = torch.equal(*gather(vec(net)))  # BatchNorm statistics: rank 0's after the epoch (no scoring here)
real = sn._all_reduce_grads
sn._all_reduce_grads = lambda params, world_size, failed=False: failed
train_supernet(twin, bundle, cfg1, sw1, progress=False, device="cpu")
sn._all_reduce_grads = real
alone = gather(vec(twin, True))
step, mean_alone = averaged[0] - init[0], (alone[0] + alone[1]) / 2 - init[0]
report.update(start_differs=not torch.equal(init[0], init[1]), same=torch.equal(averaged[0], averaged[1]),
              buffers_same=buffers_same,
              moved=float(step.abs().max()), control_drift=float((alone[0] - alone[1]).abs().max()),
              vs_mean=float((step - mean_alone).abs().max()))

# 2. two epochs with files, scores, progress lines; rank 1 writes nothing
writes = []
for name in ("_atomic_save", "write_text_atomic"):  # (obj, path) and (path, text)
    def wrap(a, b, _real=getattr(train_module, name)):
        writes.append(os.path.basename(b if isinstance(b, os.PathLike) else a))
        return _real(a, b)
    setattr(train_module, name, wrap)
net = _ddp_net(seed=0)
start = vec(net)
res = train_supernet(net, bundle, DDP_CFG, DDP_SANDWICH, out_dir=out + "/full", progress=True, device="cpu")
full = vec(net)
report.update(full_same=torch.equal(*gather(full)), full_moved=not torch.equal(full, start),
              writes=gather_object(writes), world=res.metrics["world_size"],
              histories_same=all(h == figures(res.history) for h in gather_object(figures(res.history))),
              history=res.history)

# 3. interrupted after epoch 1 (in both ranks), resumed by every rank from rank 0's last.pt
real_lr = train_module.lr_at
def lr_then_die(config, epoch):
    if epoch >= 1:
        raise KeyboardInterrupt
    return real_lr(config, epoch)
train_module.lr_at = lr_then_die
try:
    train_supernet(_ddp_net(seed=0), bundle, DDP_CFG, DDP_SANDWICH, out_dir=out + "/cut", progress=False, device="cpu")
except KeyboardInterrupt:
    pass
train_module.lr_at = real_lr
dist.barrier()  # rank 0 has written last.pt
net = _ddp_net(seed=5 + rank)
res = train_supernet(net, bundle, DDP_CFG, DDP_SANDWICH, out_dir=out + "/cut", resume=True, progress=False,
                     device="cpu")
report.update(resumed_equal=all(gather_object(torch.equal(vec(net), full))),
              resumed_history=[h["train_loss"] for h in res.history])

# 4. the largest plan's loss not finite in rank 1 only: both ranks stop with the error (none waits forever)
if rank == 1:
    F = sn.F
    sn.F = types.SimpleNamespace(**{**vars(F), "cross_entropy": lambda *a, **k: F.cross_entropy(*a, **k) * math.nan})
try:
    train_supernet(_ddp_net(seed=0), bundle, cfg1, sw1, progress=False, device="cpu")
    failure = None
except condense.CondenseError as err:
    failure = str(err)
report.update(failures=gather_object(failure))
if rank == 0:
    print("RESULT " + json.dumps(report))
dist.destroy_process_group()
"""


def test_torchrun_two_processes_average_the_gradients_by_hand(tmp_path, data):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            data["spec"],
            str(tmp_path),
            str(Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads([t for t in proc.stdout.splitlines() if t.startswith("RESULT ")][-1][len("RESULT ") :])
    # rank 0's initial weights broadcast, then identical averaged gradients: identical replicas
    assert r["start_differs"] and r["same"] and r["buffers_same"] and r["moved"] > 1e-4
    # the step is the mean of the two ranks' own steps (to rounding); without the all-reduce it would be one
    # rank's own step, which differs from that mean by half the control run's drift
    assert r["control_drift"] > 1e-3 and r["vs_mean"] < 1e-6 < r["control_drift"] / 1000, r
    # two epochs: replicas identical (weights and BatchNorm statistics), only rank 0 wrote and printed
    assert r["full_same"] and r["full_moved"] and r["world"] == 2 and r["histories_same"]
    assert r["writes"] == [["last.pt", "last.pt", "metrics.json"], []]
    assert proc.stdout.count("supernet epoch 1/2") == 1 and proc.stdout.count("supernet epoch 2/2") == 1
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["last.pt", "metrics.json"]
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 2
    h = r["history"][-1]
    assert h["images_per_s"] > 0 and 0 <= h["largest_acc"] <= 1 and 0 <= h["smallest_acc"] <= 1
    assert torch.load(tmp_path / "full" / "last.pt", weights_only=True)["world_size"] == 2
    # resumed by both ranks after an interruption: the uninterrupted run's weights and history
    assert r["resumed_equal"] and r["resumed_history"] == [x["train_loss"] for x in r["history"]]
    # a non-finite loss in one rank stops both (after the step's all-reduce), with the error
    assert "not finite in another process" in r["failures"][0] and "the loss became nan" in r["failures"][1]
    # the 2-process checkpoint is not resumed by one process: the data order depends on the process count
    bundle = load_data(data["spec"], input_size="3x16x16", limit_test=32)
    with pytest.raises(condense.CondenseError, match=r"2 process\(es\), this one has 1") as err:
        train_supernet(
            _ddp_net(seed=0),
            bundle,
            DDP_CFG,
            DDP_SANDWICH,
            out_dir=tmp_path / "full",
            resume=True,
            progress=False,
            device="cpu",
        )
    assert "--nproc_per_node=2" in err.value.hint


def test_search_strategy_supernet_under_torchrun(tmp_path, data):
    """``torchrun -m condense search --strategy supernet``: the supernet trains on 2 ranks, rank 0 alone scores
    and writes the study, and both processes exit 0."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "launch_search.py"
    script.write_text("import sys\nfrom search import search_main\nsys.exit(search_main(sys.argv[1:]))\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            "zoo:resnet_tiny",
            "--data",
            data["spec"],
            "--input-size",
            "3x16x16",
            "--strategy",
            "supernet",
            "--supernet-epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "16",
            "--limit-test",
            "32",
            "--calib-images",
            "16",
            "--random-plans",
            "1",
            "--trials",
            "2",
            "--population",
            "4",
            "--budget",
            "80%",
            "--device",
            "cpu",
            "--no-progress",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "supernet" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert proc.stdout.count("Pareto front of") == 1 and proc.stdout.count("training the supernet") == 1
    assert (out / "front.csv").is_file() and len(pd.read_csv(out / "trials.csv")) >= 2


def test_torchrun_refusals(tmp_path, data, monkeypatch):
    """Under torchrun the per-trial search and --finish are refused before anything is joined or written."""
    from search import FinishConfig, run_search, run_supernet_search

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(condense.CondenseError, match="per-trial search does not run under torchrun"):
        run_search("zoo:resnet_tiny", data["spec"], output=tmp_path / "a", trials=1)
    with pytest.raises(condense.CondenseError, match="--finish does not run under torchrun"):
        run_supernet_search(
            "zoo:resnet_tiny", data["spec"], output=tmp_path / "b", trials=1, device="cpu", finish=FinishConfig(top=1)
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_condense_supernet_ranges_over_the_whole_plan_space_by_default():
    """condense.supernet builds the plan space itself (declared in condense, which never imports search);
    search.supernet narrows the same space."""
    import search

    model = condense.build_model("zoo:resnet_tiny")
    size = (3, 32, 32)
    net = condense.supernet(model, input_size=size)
    assert net.space == condense.build_space(condense.find_runs(model, size))
    assert search.SearchSpace is condense.SearchSpace
    narrow = search.supernet(model, input_size=size, layers=["global"], K=(1, 3))
    assert narrow.space.layers == ("global",) and narrow.space.K == (1, 3)
