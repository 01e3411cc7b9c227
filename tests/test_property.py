"""Property-based agreement: hypothesis draws random networks, and the hand-written path must equal
the autograd oracle (and, in float64, the finite-difference referee) under the check's tolerances.

Strategy (:func:`cases`), one whole case per example:

* sizes: 1-4 hidden layers; every width, inputs and outputs included, 1-64 (cross_entropy accepts
  one output, a softmax of one logit: loss 0, zero gradients; it is drawn as an edge);
* hidden activation and output activation (None = the hidden one): logistic, tanh, relu, identity;
  alpha in [0.1, 5] when a logistic is used (1 otherwise);
* loss: sse, mse (targets: class indices or float rows in [0, 1]) or cross_entropy (class indices,
  one-hot rows or probability rows);
* bias on/off; init "glorot" or "chapter", then every weight and bias times 10**w, w in [-2, 1]
  (trained networks are not at their init; small weights with large inputs reach the moderately
  saturated units where derivative formulas lose precision); float32 / float64; the weight seed;
* batch 1-64, or one 1-D pattern X of shape (inputs,) with a 1-D T or a 0-d class index;
* X from a continuous distribution (normal or uniform in [-1, 1]) times 10**u, u in [-3, 3]: exact
  zeros, and so relu pre-activations exactly at the kink, have probability ~0 (and where one happens
  hand and autograd both take the subgradient 0, so the comparison still holds).

Properties:

* ``test_hand_matches_oracle``: ``handgrad.check`` is ok for the loss, every gradient and every
  delta; float64 examples also run the finite-difference referee on ``FD_ELEMENTS`` random elements
  per tensor (``fd_max_per_tensor``; the check's default is every element up to 5000 parameters)
  where the referee can judge (see the bounds below).  ``hypothesis.target`` steers the search to
  the largest error / allowance of any hand-vs-autograd row.
* ``test_float64_agrees_with_finite_differences``: float64 draws in the referee's envelope (inputs
  at scale 10**[-1, 1]), every example three-way.
* ``test_injected_error_is_caught`` (must fail): one drawn gradient or delta, scaled by 1.01 or with
  its largest element moved by 1 %, makes the report not ok, naming that tensor and no other.
* ``test_property_catches_a_planted_bug``: with a wrong backward planted in the library (one per
  branch: logistic gain, tanh derivative, relu mask, bias sum, mse factor, cross-entropy batch
  mean), the agreement property itself finds a counterexample.

Bounds, each with its reason (no tolerance of the check is loosened):

* the referee's envelope (:func:`fd_validity`): where one FD step could cross a relu kink or bend a
  smooth unit too far, the referee is set aside (hand vs autograd still judged);
* the dtype's envelope (:func:`resolution`, :func:`resolvable`): where the backward sums cancel so
  much that rounding alone, u * (the mass of their terms), could exceed 1/100 of the check's
  allowance, two correct evaluations may legitimately disagree (both are then off the float64 truth
  by more than the allowance).  Such float32 draws are checked in float64 instead (about a quarter
  of them: chapter weights times 10 with large inputs, confident cross-entropy); draws that even
  float64 cannot resolve (~1 %, degenerate) are rejected.  This bounds only summation round-off:
  an inaccurate formula (like ``1 - a*a`` for a saturated tanh, found here, see Tanh in
  :mod:`handgrad.layers` and ``test_saturated_tanh_regression``) still fails inside the envelope.

Size: ``HANDGRAD_PROPERTY_EXAMPLES=N`` gives every property test N examples (default 1000, 150 and
200: ~20-30 s for the module on 2 idle cores; the planted-bug tests are not scaled).  Reproducible:
``database=None`` and ``derandomize=True`` (the same examples every run);
``HANDGRAD_PROPERTY_SEED=S`` draws another fixed sequence.  The examples run (and how many float64
ones the referee judged) are printed at the end of the module's tests.
"""
from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import (HealthCheck, Phase, assume, example, given, note, seed, settings,
                        strategies as st, target)

import handgrad.layers
import handgrad.losses
from handgrad import MLP, check, oracle
from handgrad.check import FD_STEP, tolerances

EXAMPLES = int(os.environ.get("HANDGRAD_PROPERTY_EXAMPLES", "0") or 0)
SEED = os.environ.get("HANDGRAD_PROPERTY_SEED")
COUNTS = collections.defaultdict(collections.Counter)  # test -> what happened to its examples

ACTIVATIONS = ("logistic", "tanh", "relu", "identity")
LOSSES = ("sse", "mse", "cross_entropy")
MAX_WIDTH = 64
MAX_BATCH = 64
# Finite differences on this many random elements per tensor (check(fd_max_per_tensor=...)): each is
# two forward passes, so a 10-tensor network costs 160 passes instead of up to 2 x 20 000.
FD_ELEMENTS = 8
# The referee's envelope (see fd_validity): one FD step may move no pre-activation by more than
# REACH_MAX of its activation's curvature scale, and no relu pre-activation by more than
# 1/KINK_MARGIN of its distance to the kink.
REACH_MAX = 1e-3
KINK_MARGIN = 2.0
# The dtype's envelope (see resolution): the rounding of the backward sums, u * (their terms' mass),
# may use at most 1/COND_MAX_INV of the check's allowance.  Unit roundoff u by dtype:
COND_MAX_INV = 100.0
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def prop_settings(default: int, **kw):
    """``default`` examples (or HANDGRAD_PROPERTY_EXAMPLES), reproducible, no deadline."""
    s = settings(max_examples=EXAMPLES or default, deadline=None, database=None,
                 derandomize=SEED is None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], **kw)

    def wrap(f):
        f = s(f)
        return seed(int(SEED))(f) if SEED is not None else f
    return wrap


# --------------------------------------------------------------------------- the drawn case
@dataclass(frozen=True)
class Case:
    sizes: tuple
    activation: str
    output_activation: str | None
    alpha: float
    loss: str
    bias: bool
    init: str
    dtype: str
    seed: int
    w_log10_scale: float   # initial weights and biases times 10**this (trained nets aren't at init)
    batch: int | None      # None: X is one 1-D pattern of shape (sizes[0],)
    x_dist: str            # "normal" or "uniform" (both continuous: exact zeros have probability 0)
    x_log10_scale: float
    t_kind: str            # "index", "rows" (sse/mse), "one_hot", "soft" (cross_entropy)
    data_seed: int

    @property
    def torch_dtype(self):
        return getattr(torch, self.dtype)

    def build(self):
        net = MLP(list(self.sizes), activation=self.activation, alpha=self.alpha,
                  output_activation=self.output_activation, loss=self.loss, bias=self.bias,
                  dtype=self.torch_dtype, seed=self.seed, init=self.init)
        for name, p in net.params.items():
            net.params[name] = (p.to(torch.float64) * 10.0 ** self.w_log10_scale).to(p.dtype)
        gen = torch.Generator().manual_seed(self.data_seed)
        n = 1 if self.batch is None else self.batch
        n_in, n_out = self.sizes[0], self.sizes[-1]
        if self.x_dist == "normal":
            X = torch.randn(n, n_in, generator=gen, dtype=torch.float64)
        else:
            X = torch.rand(n, n_in, generator=gen, dtype=torch.float64) * 2 - 1
        X = X * 10.0 ** self.x_log10_scale
        labels = torch.randint(0, n_out, (n,), generator=gen)
        if self.t_kind == "index":
            T = labels
        elif self.t_kind == "one_hot":
            T = torch.nn.functional.one_hot(labels, n_out).to(torch.float64)
        elif self.t_kind == "soft":
            T = torch.softmax(torch.randn(n, n_out, generator=gen, dtype=torch.float64), dim=1)
        else:  # desired outputs in [0, 1], the range of a logistic output
            T = torch.rand(n, n_out, generator=gen, dtype=torch.float64)
        if self.batch is None:
            X, T = X[0], T[0]  # X (n_in,); T (n_out,) or a 0-d class index
        X = X.to(self.torch_dtype)
        T = T.to(self.torch_dtype) if T.dtype.is_floating_point else T
        return net, X, T


@st.composite
def cases(draw, dtypes=("float32", "float64"), log10_scale=(-3.0, 3.0), w_log10_scale=(-2.0, 1.0)):
    depth = draw(st.integers(1, 4))
    width = st.integers(1, MAX_WIDTH)
    # cross_entropy accepts one output (softmax of one logit: loss 0, zero gradients): a valid edge
    sizes = tuple(draw(st.lists(width, min_size=depth + 2, max_size=depth + 2)))
    loss = draw(st.sampled_from(LOSSES))
    activation = draw(st.sampled_from(ACTIVATIONS))
    output_activation = draw(st.sampled_from((None,) + ACTIVATIONS))  # None: the hidden one
    logistic_used = activation == "logistic" or (
        loss != "cross_entropy" and (output_activation or activation) == "logistic")
    alpha = draw(st.floats(0.1, 5.0)) if logistic_used else 1.0
    t_kinds = ("index", "one_hot", "soft") if loss == "cross_entropy" else ("index", "rows")
    return Case(
        sizes=sizes, activation=activation, output_activation=output_activation, alpha=alpha,
        loss=loss, bias=draw(st.booleans()), init=draw(st.sampled_from(("glorot", "chapter"))),
        dtype=draw(st.sampled_from(dtypes)), seed=draw(st.integers(0, 2**32 - 1)),
        w_log10_scale=draw(st.floats(*w_log10_scale)),
        batch=draw(st.one_of(st.none(), st.integers(1, MAX_BATCH))),
        x_dist=draw(st.sampled_from(("normal", "uniform"))),
        x_log10_scale=draw(st.floats(*log10_scale)),
        t_kind=draw(st.sampled_from(t_kinds)), data_seed=draw(st.integers(0, 2**32 - 1)))


# --------------------------------------------------------------------------- the referee's envelope
def _act64(name, alpha, z):
    """Activation and its derivative in float64 (for the envelope only, not for any verdict)."""
    if name == "logistic":
        F = torch.sigmoid(alpha * z)
        return F, alpha * F * (1 - F)
    if name == "tanh":
        a = torch.tanh(z)
        return a, 1 - a * a
    if name == "relu":
        return torch.relu(z), (z > 0).to(z.dtype)
    return z, torch.ones_like(z)


def _curvature_scale(name, alpha):
    """1/(the width of z over which the activation bends): 0 for the piecewise-linear ones."""
    return {"logistic": alpha, "tanh": 1.0}.get(name, 0.0)


def fd_validity(net, X):
    """Whether the check's finite differences can referee (net, X), and if not, why.

    The referee takes one central difference of fixed absolute step h = FD_STEP per parameter.  For
    parameter theta of layer j, the step moves the pre-activation z_k[b, u] (k >= j) by, to first
    order, h * |dz_k[b, u]/dtheta| = h * |a_{j-1}[b, i]| * |J_jk[b, v, u]| (1 for a bias instead of
    |a_{j-1}|), with J_jk = dz_k/dz_j the per-pattern Jacobian.  ``reach_k[b, u]`` is the maximum
    of that over every parameter (exact, not a worst case over signs).  Two ways the referee breaks:

    * kinks: relu is not differentiable at 0.  If one FD step can carry a relu pre-activation across
      0, the central difference averages two slopes and is no derivative at all (this happens with
      small inputs, where a bias step of 1e-5 is a sizeable fraction of |z|, and by chance at any
      scale).  Within one linear piece relu layers are exactly affine, so |z| > KINK_MARGIN * reach
      (margin 2 for the second-order effects of smooth layers around them) guarantees no crossing.
      A pre-activation *at* a kink is where hand and autograd both take the subgradient 0, so the
      hand-vs-autograd comparison stands there; only the referee is set aside.
    * curvature: the truncation error of a central difference is h^2/6 f'''; with the step moving z
      by u in units of the activation's bending width (1/alpha for logistic, 1 for tanh and for the
      softmax inside cross-entropy) it is about u^2/3 of the gradient.  With inputs of magnitude 1e3
      (u ~ 3e-2) that is ~3e-4, above the referee's rtol 1e-5: a limit of a fixed-step referee, not
      an error of the hand path (autograd vs fd fails alike).  u <= REACH_MAX = 1e-3 keeps it at
      3e-7 (with 1e-2, 2 of 1500 random float64 draws failed the referee; with 1e-3, none).
      Identity and relu layers and the quadratic sse/mse add no curvature of their own.
    Draws outside the envelope are still checked hand vs autograd, the comparison that matters.
    """
    p = {k: v.detach().to(torch.float64) for k, v in net.params.items()}
    a = X.detach().to(torch.float64).reshape(-1, net.sizes[0])
    L = net.n_layers
    B = a.shape[0]
    jac = []        # jac[j] = dz_k/dz_j for the current k, shape (B, n_j, n_k), j = 0..k-1
    reach_scale = []  # per layer j, per pattern b: max_i |a_{j-1}[b, i]| (at least 1 with biases)
    worst_reach, worst_kink = 0.0, math.inf
    for k in range(1, L + 1):
        W = p[f"W{k}"]
        z = a @ W + (p[f"b{k}"] if f"b{k}" in p else 0.0)
        s = a.abs().amax(dim=1)
        reach_scale.append(torch.clamp(s, min=1.0) if net.bias else s)
        if k > 1:
            jac = [J @ W for J in jac]  # already times F'(z_{k-1}) below
        jac.append(torch.eye(W.shape[1], dtype=torch.float64).expand(B, -1, -1))
        reach = torch.stack([reach_scale[j][:, None] * jac[j].abs().amax(dim=1)
                             for j in range(k)]).amax(dim=0) * FD_STEP   # (B, n_k)
        if k < L:
            name = net.activation
        else:
            name = "softmax" if net.loss == "cross_entropy" else net.output_activation
        kappa = 1.0 if name == "softmax" else _curvature_scale(name, net.alpha)
        worst_reach = max(worst_reach, kappa * float(reach.max()))
        if name == "relu":
            ratio = z.abs() / torch.clamp(reach, min=1e-300)
            worst_kink = min(worst_kink, float(ratio.min()))
        if k < L:
            a, d = _act64(name, net.alpha, z)
            jac = [J * d[:, None, :] for J in jac]
    if worst_kink <= KINK_MARGIN:
        return False, f"a relu pre-activation only {worst_kink:.3g} x one FD step from its kink"
    if worst_reach > REACH_MAX:
        return False, f"an FD step moves a pre-activation by {worst_reach:.3g} of its bending width"
    return True, "in the referee's envelope"


# --------------------------------------------------------------------------- the dtype's envelope
def term_mass(net, X, T):
    """For every gradient and delta, the magnitude of the terms its backward sums add up: the
    backward pass run on absolute values (|dloss/dz_L| terms, |W|, |F'|, |a|), in float64, on the
    same forward values.  Two correct evaluations that round these sums in different orders (hand:
    ``dz @ W.t()``, ``x.t() @ dz``, (p - T)/n; autograd: its own kernels, p/n - T/n) differ by a
    few u * mass."""
    p = {k: v.detach().to(torch.float64) for k, v in net.params.items()}
    a = X.detach().to(torch.float64).reshape(-1, net.sizes[0])
    B, L, n_out = a.shape[0], net.n_layers, net.sizes[-1]
    ins, slopes = [], []
    for k in range(1, L + 1):
        ins.append(a)
        z = a @ p[f"W{k}"] + (p[f"b{k}"] if f"b{k}" in p else 0.0)
        if k == L and net.loss == "cross_entropy":
            a, d = z, torch.ones_like(z)
        else:
            a, d = _act64(net.activation if k < L else net.output_activation, net.alpha, z)
        slopes.append(d.abs())
    if T.dtype.is_floating_point:
        Tt = T.detach().to(torch.float64).reshape(B, n_out)
    else:
        Tt = torch.nn.functional.one_hot(T.reshape(B).long(), n_out).to(torch.float64)
    if net.loss == "cross_entropy":
        P = torch.softmax(a, dim=1)
        # where the working dtype's p is exactly the target, both paths give exactly 0
        exact = torch.softmax(a.to(net.dtype), dim=1).to(torch.float64) == Tt
        D = torch.where(exact, 0.0, P + Tt) / B
    else:
        D = (a - Tt).abs() * (1.0 if net.loss == "sse" else 2.0 / (B * n_out))
    mass = {}
    for k in range(L, 0, -1):
        D = D * slopes[k - 1]
        mass[f"delta{k}"] = D
        mass[f"W{k}"] = ins[k - 1].abs().t() @ D
        if f"b{k}" in p:
            mass[f"b{k}"] = D.sum(0)
        D = D @ p[f"W{k}"].abs().t()
    return mass


def resolution(net, X, T) -> float:
    """max over every gradient and delta element of u * mass / (the check's allowance there).

    Precision lost to cancellation is not a bug, and the check's tolerances (float32: 1e-5 of the
    tensor's largest element, from ``torch.testing``) assume sums that do not cancel much.  Over
    8000 random draws of both dtypes, |hand - autograd| / (u * mass) had median 2.4, 99th
    percentile 17-31 and maximum 127: so where u * mass <= allowance / COND_MAX_INV the two correct
    evaluations must agree within the check, and beyond it they may not.  Example (found by the
    must-fail property): float32 47-5-3-47-47 relu -> logistic(0.1), weights up to +-10, inputs up
    to 10, one pattern: delta2 is a 47-term sum cancelling ~100x, and W2 = a1^T delta2 scales it by
    |a1| ~ 200 to near the absolute floor 1e-5; hand -0.231153, autograd -0.231164, float64 truth
    -0.231091 (both ~7e-5 off, u * mass = 3.4 x the allowance), and the same draw in float64
    passes.  The allowance uses the oracle's values only, never the hand path's: the draw is bounded
    before anything is judged.
    """
    u = UNIT_ROUNDOFF[net.dtype]
    rtol, atol = tolerances(net.dtype)
    _, g_ref, d_ref = oracle.loss_and_grads(net, X, T, return_deltas=True)
    worst = 0.0
    for name, m in term_mass(net, X, T).items():
        ref = (g_ref[name] if name in g_ref else d_ref[name]).detach().to(torch.float64)
        ref = ref.reshape(m.shape)
        allowance = atol * max(1.0, float(ref.abs().max())) + rtol * ref.abs()
        worst = max(worst, float((u * m / allowance).max()))
    return worst


def resolvable(case: Case, counts=None) -> Case:
    """The case itself if its dtype can resolve the check's tolerances on it (:func:`resolution`),
    else its float64 twin (the same draw; float64 has 2^29 times the headroom), else rejected."""
    counts = collections.Counter() if counts is None else counts
    if resolution(*case.build()) * COND_MAX_INV <= 1.0:
        counts[case.dtype] += 1
        return case
    if case.dtype == "float32":
        twin = replace(case, dtype="float64")
        if resolution(*twin.build()) * COND_MAX_INV <= 1.0:
            note("float32 cannot resolve the check's tolerance on this draw: checked in float64")
            counts["float32 draws moved to float64"] += 1
            return twin
    counts["rejected (unresolvable)"] += 1
    assume(False)


# --------------------------------------------------------------------------- properties
def worst_ratio(row) -> float:
    """|got - ref| / allowance at the row's worst element (the check passes it while < 1)."""
    if not row.n_compared:
        return 0.0 if row.passed else 1e300
    ratio = abs(row.got_at_worst - row.ref_at_worst) / (row.atol + row.rtol * abs(row.ref_at_worst))
    return ratio if math.isfinite(ratio) else 1e300


def assert_agrees(case: Case, fd: bool | None = None, counts=None) -> bool:
    """The property, on a case already in its dtype's envelope (:func:`resolvable`): check() is ok,
    every tensor judged; ``fd=None``: the referee on in float64 wherever :func:`fd_validity` says
    it can judge.  Returns whether the referee ran."""
    net, X, T = case.build()
    if fd is None:
        fd = False
        if case.dtype == "float64":
            fd, why = fd_validity(net, X)
            note(f"finite differences: {'on' if fd else 'off'} ({why})")
            if counts is not None:
                counts["float64 with referee" if fd else "float64 referee set aside"] += 1
    report = check(net, X, T, fd=fd, fd_max_per_tensor=FD_ELEMENTS, seed=case.data_seed % 1000)
    target(max(worst_ratio(r) for r in report.rows if r.comparison == "hand vs autograd"),
           label="hand vs autograd: worst error / allowance")
    assert report.ok, str(report)
    judged = {(r.tensor, r.comparison) for r in report.rows}
    names = ["loss", *net.params, *(f"delta{k}" for k in range(1, net.n_layers + 1))]
    assert {(n, "hand vs autograd") for n in names} <= judged
    if fd:
        for name, prm in net.params.items():
            for comparison in ("hand vs fd", "autograd vs fd"):
                (row,) = [r for r in report.rows if (r.tensor, r.comparison) == (name, comparison)]
                assert row.n_compared == min(prm.numel(), FD_ELEMENTS), row
    return fd


# Found by this test (hypothesis, targeted search, ~1500 examples) while Tanh.backward computed
# 1 - a^2 as 1 - a*a, and shrunk to: W1[0, 37] hand -1.28067 vs autograd -1.28068 (error 1.49e-5,
# allowance 1.45e-5); the worst example on the way was at error / allowance 5.8.
SATURATED_TANH = Case(sizes=(1, 41, 4, 3), activation="tanh", output_activation="relu", alpha=1.0,
                      loss="sse", bias=False, init="chapter", dtype="float32", seed=0,
                      w_log10_scale=1.0, batch=None, x_dist="normal", x_log10_scale=0.0,
                      t_kind="index", data_seed=0)


@prop_settings(1000)
@given(case=cases())
@example(case=SATURATED_TANH)
def test_hand_matches_oracle(case):
    counts = COUNTS["hand vs oracle"]
    assert_agrees(resolvable(case, counts), counts=counts)


@prop_settings(150)
@given(case=cases(dtypes=("float64",), log10_scale=(-1.0, 1.0)))
def test_float64_agrees_with_finite_differences(case):
    counts = COUNTS["float64 three-way"]
    case = resolvable(case, counts)
    ok, why = fd_validity(*case.build()[:2])
    if not ok:
        counts["rejected (referee cannot judge)"] += 1
    assume(ok)  # ~3 % of these draws: a relu unit within an FD step of its kink
    assert assert_agrees(case, fd=True)


@prop_settings(200)
@given(case=cases(), data=st.data())
def test_injected_error_is_caught(case, data):
    """Must fail: one wrong tensor among correct ones is caught, and only it is named."""
    net, X, T = resolvable(case, COUNTS["must-fail"]).build()  # the others must pass: same envelope
    _, grads, deltas = net.loss_and_grads(X, T, return_deltas=True)
    name = data.draw(st.sampled_from([*grads, *deltas]), label="wrong tensor")
    into = grads if name in grads else deltas
    g = into[name]
    flat = int(g.abs().argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), g.shape))
    big = float(g.abs().max())
    rtol, atol = tolerances(net.dtype)
    # Scaling by 1.01 shows iff 0.01 m > atol * max(1, m) + rtol * m at the largest element m; below
    # m ~ 1e-3 (float32) the check's absolute floor hides a 1 % change by design, so there the
    # largest element is moved by 1 % of max(1, m) instead (1000 x the allowance, in every case).
    visible = 0.01 * big > 2 * (atol * max(1.0, big) + rtol * big)
    mode = data.draw(st.sampled_from(("scale", "element")) if visible else st.just("element"),
                     label="mode")
    if mode == "scale":
        wrong = g * 1.01
    else:
        wrong = g.clone()
        wrong[idx] = g[idx] + 0.01 * max(1.0, big)
    kw = {"grads" if name in grads else "deltas": dict(into, **{name: wrong})}
    COUNTS["must-fail"][f"wrong {'gradient' if name in grads else 'delta'}, {mode}"] += 1
    report = check(net, X, T, fd=False, **kw)
    assert not report.ok, f"{name} changed ({mode}) yet the check passed:\n{report}"
    assert {r.tensor for r in report.failures} == {name}, str(report)
    (row,) = report.failures
    assert row.comparison == "hand vs autograd" and row.mismatched >= 1
    if mode == "element":
        assert row.mismatched == 1 and row.worst_index == idx, row
    assert f"FAIL: {name} (hand vs autograd)" in str(report)


def test_saturated_tanh_regression():
    """The smallest form of what the property found: one tanh unit at z = 4 (1 - a^2 = 1.3e-3) fed
    by a large input, float32.  1 - a*a (the old formula) is off by 2e-5 relative, hand vs autograd
    fails on W1; (1 - a)(1 + a) agrees with torch's tanh_backward to the last bit here."""
    net = MLP([1, 1, 1], activation="tanh", output_activation="identity", loss="sse", bias=False,
              dtype=torch.float32, seed=0)
    net.params["W1"] = torch.tensor([[0.004]])
    net.params["W2"] = torch.tensor([[1.0]])
    X, T = torch.tensor([1000.0]), torch.tensor([3.0])
    report = check(net, X, T)
    assert report.ok, str(report)
    # the old formula on the same net fails: the property's tolerance does see this error
    old = lambda self, da, cache: (da * (1.0 - cache * cache), {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(handgrad.layers.Tanh, "backward", old)
        assert {r.tensor for r in check(net, X, T).failures} == {"W1"}


def _planted(cls, method):
    return pytest.param(cls, method, id=f"{cls.__name__}.{method.__name__}")


def _logistic_without_alpha(self, dF, F):
    return dF * (F * (1.0 - F)), {}


def _tanh_one_minus_a(self, da, a):
    return da * (1.0 - a), {}


def _relu_no_mask(self, da, a):
    return da, {}


_LINEAR_BACKWARD = handgrad.layers.Linear.backward  # the original, for the planted variant


def _linear_bias_mean(self, dz, x):
    dx, grads = _LINEAR_BACKWARD(self, dz, x)
    if "b" in grads:
        grads["b"] = dz.mean(0)
    return dx, grads


def _mse_without_2(self, E):
    return E * (-1.0 / (E.shape[-2] * E.shape[-1]))


def _ce_without_batch_mean(self, cache):
    log_p, T = cache
    return torch.exp(log_p) - T


PLANTED = [
    _planted(handgrad.layers.Logistic, _logistic_without_alpha),
    _planted(handgrad.layers.Tanh, _tanh_one_minus_a),
    _planted(handgrad.layers.ReLU, _relu_no_mask),
    _planted(handgrad.layers.Linear, _linear_bias_mean),
    _planted(handgrad.losses.MSE, _mse_without_2),
    _planted(handgrad.losses.CrossEntropy, _ce_without_batch_mean),
]


@pytest.mark.parametrize("cls,wrong_backward", PLANTED)
def test_property_catches_a_planted_bug(monkeypatch, cls, wrong_backward):
    """The agreement property can fail: plant one classic mistake in a hand backward and hypothesis
    must find a counterexample among the first 200 generated cases (no shrinking, for speed)."""
    monkeypatch.setattr(cls, "backward", wrong_backward)

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])
    @given(case=cases())
    def agreement(case):
        assert_agrees(resolvable(case), fd=False)

    with pytest.raises(AssertionError, match="FAIL: "):
        agreement()


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    lines = [f"test_property: {test}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
             for test, c in COUNTS.items()]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and capture is not None and lines:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
