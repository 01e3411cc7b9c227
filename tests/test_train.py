"""Training: the chapter's SGD on the hand-written gradients, its stopping rules and its checks."""
import json
import math

import pytest
import torch

from handgrad.data import load_dataset
from handgrad.errors import HandgradInputError
from handgrad.train import (DEFAULTS, TrainConfig, TrainResult, _thin, accuracy, build_net,
                            default_config, train)


@pytest.fixture(scope="module")
def iris():
    return load_dataset("iris", seed=0)


def _sse(net, data):
    """The SSE over all patterns, recomputed from net.forward alone (1/2 sum E^2)."""
    A = net.forward(data.X_train)
    return float(0.5 * ((data.onehot(data.y_train) - A) ** 2).sum())


def _params(net):
    return {k: v.clone() for k, v in net.params.items()}


# ---------------------------------------------------------------- the chapter's nets reach their targets
@pytest.mark.parametrize("name, target", [("xor", 0.2), ("letters", 0.05)])
def test_chapter_nets_reach_sse_target_with_defaults(name, target):
    data = load_dataset(name)
    cfg = default_config(name)
    assert cfg.target_loss == target and cfg.loss == "sse" and cfg.init == "chapter"
    assert cfg.batch == "online" and cfg.activation == "logistic" and cfg.eta == 0.5
    net = build_net(cfg, data)
    assert net.sizes == ([2, 2, 2] if name == "xor" else [25, 6, 5])
    r = train(net, data, cfg)
    assert r.stopped_reason == "target" and r.reached_target, r.message
    assert r.final_loss < target
    sse = _sse(net, data)
    assert sse < target and sse == pytest.approx(r.final_loss, rel=1e-5)
    per_pattern = 0.5 * ((data.onehot(data.y_train) - net.forward(data.X_train)) ** 2).sum(1)
    assert bool((per_pattern < target).all())
    assert r.train_accuracy == 1.0 and r.test_accuracy is None
    assert r.steps == r.epochs * len(data.y_train)  # online: an epoch is n_train single-pattern updates
    assert r.history[0][0] == 0 and r.history[-1] == (r.epochs, r.final_loss)


# ---------------------------------------------------------------- real data: the defaults' accuracy
@pytest.mark.parametrize("name, floor", [("iris", 0.95), ("digits", 0.96), ("breast-cancer", 0.95)])
def test_real_sets_reach_accuracy_with_defaults(name, floor):
    data = load_dataset(name, seed=0)
    cfg = default_config(name)
    net = build_net(cfg, data)
    r = train(net, data, cfg)
    assert r.stopped_reason == "epochs", r.message
    assert r.test_accuracy >= floor
    assert r.test_accuracy == accuracy(net, data.X_test, data.y_test)
    assert r.seconds < 60


def test_csv_path_gets_csv_defaults():
    assert default_config("handgrad/data/iris.csv") == TrainConfig.from_dict(DEFAULTS["csv"])
    assert default_config("Breast_Cancer").hidden == DEFAULTS["breast-cancer"]["hidden"]
    assert default_config("iris", epochs=3).epochs == 3


# ---------------------------------------------------------------- the update rule
def test_update_is_minus_eta_times_gradient_plus_momentum(iris):
    """Two full-batch updates by hand: v1 = -eta g1, v2 = m v1 - eta g2 (delta w = -eta dL/dw)."""
    cfg = default_config("iris", batch="full", epochs=1, momentum=0.9, eta=0.05)
    net, ref = build_net(cfg, iris), build_net(cfg, iris)
    T = iris.y_train
    _, g1 = ref.loss_and_grads(iris.X_train, T)
    v = {k: -0.05 * g1[k] for k in g1}
    for k in v:
        ref.params[k] += v[k]
    _, g2 = ref.loss_and_grads(iris.X_train, T)
    for k in v:
        ref.params[k] += 0.9 * v[k] - 0.05 * g2[k]
    r = train(net, iris, cfg.replace(epochs=2))
    assert r.steps == 2 and r.epochs == 2
    for k in net.params:
        torch.testing.assert_close(net.params[k], ref.params[k], rtol=1e-5, atol=1e-6)


def test_targets_are_onehot_rows_for_sse_and_indices_for_cross_entropy(iris):
    seen = []
    for loss in ("sse", "cross_entropy"):
        cfg = default_config("iris", loss=loss, epochs=1, batch="full", verify_every=1)
        net = build_net(cfg, iris)
        original = net.loss_and_grads

        def spy(X, T, return_deltas=False, _orig=original):
            seen.append((loss, T.dtype, tuple(T.shape)))
            return _orig(X, T, return_deltas=return_deltas)

        net.loss_and_grads = spy
        train(net, iris, cfg)
    n = len(iris.y_train)
    # the net's own loss_and_grads runs inside the verification check (the fast engine trains)
    assert seen == [("sse", torch.float32, (n, 3)), ("cross_entropy", torch.int64, (n,))]


# ---------------------------------------------------------------- batching modes, momentum
@pytest.mark.parametrize("batch, steps_per_epoch", [("full", 1), (16, 8), (50, 3), ("online", 114)])
def test_batch_modes_run_and_learn(iris, batch, steps_per_epoch):
    cfg = default_config("iris", batch=batch, epochs=5, eta=0.01 if batch == "online" else 0.05)
    r = train(build_net(cfg, iris), iris, cfg)
    assert r.stopped_reason == "epochs" and r.epochs == 5
    assert r.steps == 5 * steps_per_epoch
    assert r.final_loss < r.history[0][1]
    assert len(r.history) == 6


def test_momentum_changes_the_trajectory(iris):
    out = []
    for m in (0.0, 0.9):
        cfg = default_config("iris", momentum=m, epochs=3)
        net = build_net(cfg, iris)
        train(net, iris, cfg)
        out.append(net.params)
    assert not all(torch.equal(out[0][k], out[1][k]) for k in out[0])


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("batch", ["online", 16, "full"])
def test_same_seed_same_parameters_bit_for_bit(iris, batch):
    runs = []
    for seed in (0, 0, 1):
        cfg = default_config("iris", batch=batch, epochs=3, seed=seed)
        net = build_net(cfg, iris)
        r = train(net, iris, cfg)
        runs.append((net.params, r))
    (p0, r0), (p1, r1), (p2, _) = runs
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert r0.history == r1.history and r0.final_loss == r1.final_loss
    assert not all(torch.equal(p0[k], p2[k]) for k in p0)


def test_same_initial_weights_different_seed_shuffles_differently(iris):
    a, b = (build_net(default_config("iris"), iris) for _ in range(2))
    train(a, iris, default_config("iris", epochs=2))
    train(b, iris, default_config("iris", epochs=2, seed=5))  # same starting net, other shuffles
    assert not all(torch.equal(a.params[k], b.params[k]) for k in a.params)


# ---------------------------------------------------------------- verify_every
def test_verify_every_passes_on_the_hand_gradients(iris):
    cfg = default_config("iris", epochs=2, verify_every=5)
    r = train(build_net(cfg, iris), iris, cfg)
    assert r.stopped_reason == "epochs" and r.failed_report is None
    assert r.steps == 16 and r.checks_run == 4  # updates 1, 6, 11, 16


def test_verify_every_float64_with_finite_differences():
    data = load_dataset("xor", dtype=torch.float64)
    cfg = default_config("xor", epochs=3, verify_every=1)
    r = train(build_net(cfg, data), data, cfg)
    assert r.stopped_reason == "epochs" and r.checks_run == r.steps == 12


@pytest.mark.parametrize("every", [1, 3])
def test_wrong_gradient_is_caught_before_it_is_applied(iris, every):
    cfg = default_config("iris", epochs=5, verify_every=every, engine="reference")
    net = build_net(cfg, iris)
    before = _params(net)
    original = net.loss_and_grads

    def wrong(X, T, return_deltas=False):
        out = original(X, T, return_deltas=return_deltas)
        out[1]["W1"] = out[1]["W1"] * 2
        return out

    net.loss_and_grads = wrong
    r = train(net, iris, cfg)
    assert r.stopped_reason == "verify-mismatch"
    assert r.steps == 0 and r.epochs == 0 and r.checks_run == 1
    assert r.failed_report is not None and not r.failed_report.ok
    assert {row.tensor for row in r.failed_report.failures} == {"W1"}
    assert "W1" in r.message and "step 1" in r.message
    assert all(torch.equal(before[k], net.params[k]) for k in before)  # nothing applied
    json.dumps(r.to_dict(), allow_nan=False)


def test_fast_engine_gradient_is_what_verification_checks(iris, monkeypatch):
    from handgrad.fast import FastStep
    cfg = default_config("iris", epochs=5, verify_every=2)
    assert cfg.engine == "fast"
    assert train(build_net(cfg, iris), iris, cfg).stopped_reason == "epochs"
    original = FastStep.loss_and_grads

    def wrong(self, X, T, return_deltas=False):
        out = original(self, X, T, return_deltas)
        out[1]["b1"] = out[1]["b1"] * -1.0
        return out

    monkeypatch.setattr(FastStep, "loss_and_grads", wrong)
    r = train(build_net(cfg, iris), iris, cfg)
    assert r.stopped_reason == "verify-mismatch" and r.steps == 0
    assert [row.tensor for row in r.failed_report.failures] == ["b1"]


def test_fast_and_reference_engines_train_to_the_same_parameters(iris):
    cfg = default_config("iris", epochs=3)
    nets = {}
    for engine in ("fast", "reference"):
        nets[engine] = build_net(cfg, iris)
        train(nets[engine], iris, cfg.replace(engine=engine))
    for k in nets["fast"].params:
        # float32, ~300 updates of the same arithmetic in another order: drift of a few ulp per step.
        torch.testing.assert_close(nets["fast"].params[k], nets["reference"].params[k], rtol=1e-4, atol=1e-5)


def test_wrong_gradient_later_in_training_is_caught_at_its_check(iris):
    cfg = default_config("iris", epochs=5, verify_every=4, engine="reference")
    net = build_net(cfg, iris)
    original, calls = net.loss_and_grads, [0]

    def wrong_after_ten(X, T, return_deltas=False):
        out = original(X, T, return_deltas=return_deltas)
        if not return_deltas:
            calls[0] += 1
            if calls[0] > 10:
                out[1]["b2"] = out[1]["b2"] + 1.0
        return out

    net.loss_and_grads = wrong_after_ten
    r = train(net, iris, cfg)
    assert r.stopped_reason == "verify-mismatch"
    assert r.steps == 12 and r.checks_run == 4  # checks before updates 1, 5, 9 pass; 13 fails
    assert [row.tensor for row in r.failed_report.failures] == ["b2"]


# ---------------------------------------------------------------- divergence
def test_absurd_eta_stops_as_non_finite(iris):
    cfg = default_config("iris", activation="relu", eta=1e30, momentum=0.0, batch="full", epochs=50)
    r = train(build_net(cfg, iris), iris, cfg)
    assert r.stopped_reason == "non-finite"
    assert not math.isfinite(r.final_loss) and r.epochs < 50
    assert "epoch" in r.message and "step" in r.message
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert isinstance(d["final_loss"], str)


def test_absurd_eta_on_the_chapter_net():
    data = load_dataset("letters")
    cfg = default_config("letters", activation="identity", eta=1e30)
    r = train(build_net(cfg, data), data, cfg)
    assert r.stopped_reason == "non-finite" and not r.reached_target


# ---------------------------------------------------------------- result, history, progress
def test_result_to_dict_is_json(iris):
    cfg = default_config("iris", epochs=2)
    r = train(build_net(cfg, iris), iris, cfg)
    assert isinstance(r, TrainResult)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["stopped_reason"] == "epochs" and d["reached_target"] is False
    assert d["history"][0][0] == 0 and len(d["history"]) == 3
    assert 0 <= d["test_accuracy"] <= 1 and d["failed_report"] is None


def test_history_is_thinned_to_1000_points():
    data = load_dataset("letters")
    cfg = default_config("letters", epochs=1500, target_loss=None, batch="full")
    r = train(build_net(cfg, data), data, cfg)
    assert len(r.history) <= 1000 and r.history[0][0] == 0 and r.history[-1][0] == 1500
    epochs = [e for e, _ in r.history]
    assert epochs == sorted(set(epochs))
    assert _thin(list(range(10)), 1000) == list(range(10))
    thinned = _thin(list(range(5001)), 1000)
    assert len(thinned) == 1000 and thinned[0] == 0 and thinned[-1] == 5000


def test_progress_is_called_with_short_status(iris):
    lines = []
    cfg = default_config("iris", epochs=3)
    r = train(build_net(cfg, iris), iris, cfg, progress=lines.append)
    assert 1 <= len(lines) <= 2 + 4 * r.seconds + 1
    assert all("epoch" in s and "loss" in s and "acc" in s for s in lines)
    assert lines[-1].startswith("epochs:") and "test acc" in lines[-1]


def test_target_already_met_stops_at_epoch_zero():
    data = load_dataset("xor")
    cfg = default_config("xor", target_loss=10.0)
    r = train(build_net(cfg, data), data, cfg)
    assert r.stopped_reason == "target" and r.epochs == 0 and r.steps == 0 and r.reached_target


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("field, value", [
    ("batch", "mini"), ("batch", 0), ("batch", True), ("eta", 0), ("eta", math.inf),
    ("momentum", 1.0), ("momentum", -0.1), ("epochs", -1), ("epochs", 2.5), ("target_loss", -1.0),
    ("verify_every", -1), ("hidden", [0]), ("hidden", "6"), ("activation", "softplus"),
    ("loss", "hinge"), ("init", "zeros"), ("seed", 1.5),
])
def test_bad_config_is_refused(field, value):
    with pytest.raises(HandgradInputError, match=field):
        TrainConfig(**{field: value})


def test_unknown_config_key_and_mismatched_net(iris):
    with pytest.raises(HandgradInputError, match="config"):
        TrainConfig.from_dict({"hiden": [3]})
    net = build_net(default_config("xor"), load_dataset("xor"))
    with pytest.raises(HandgradInputError, match="net"):
        train(net, iris, default_config("iris"))
    net64 = build_net(default_config("iris"), iris, dtype=torch.float64)
    with pytest.raises(HandgradInputError, match="data"):
        train(net64, iris, default_config("iris"))
