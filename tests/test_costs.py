"""condense._costs: PlanCosts, the cost model fit and the search share (block-and-layer estimates)."""

import pytest


@pytest.mark.parametrize("name", ["zoo:resnet_tiny", "zoo:densenet_bc"])
def test_budget_screen_estimate_is_close_to_the_measured_count(name, tmp_path):
    """Plans far over budget are rejected by estimate (blocks and layers counted one by one) without being
    built: the estimate must be within 2% of the count measured on the built model, for random plans."""
    import optuna

    from condense import find_runs, macs_and_params
    from condense._models import build_model, parse_model_spec
    from condense.train import TrainConfig
    from search import build_space
    from search._objective import SCREEN_MARGIN, Objective

    model = build_model(parse_model_spec(name), **({"depth": 40} if name.endswith("densenet_bc") else {}))
    size = (3, 32, 32)
    found = find_runs(model, size)
    space = build_space(found)
    obj = Objective(
        space=space,
        model=model,
        found=found,
        data=None,
        train_config=TrainConfig(epochs=1),
        trials_dir=tmp_path,
        macs_before=found.total_macs,
        params_before=found.total_params,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(12):
        plan = space.plan(space.suggest(study.ask()))
        est = obj.estimate(plan)
        assert est is not None
        macs, params = macs_and_params(obj.build(plan), size)
        assert abs(est[0] - macs) <= 0.02 * macs and abs(est[1] - params) <= 0.02 * params, (plan, est, macs)
    assert SCREEN_MARGIN > 0.02  # the screen only rejects what the estimate error cannot bring back in budget
