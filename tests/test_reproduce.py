"""The Rumelhart et al. (1986) reproduction: data, criteria and bookkeeping (small runs)."""
import torch

from handgrad.ensemble import Ensemble
from handgrad.reproduce import Outcome, run, symmetry_data, table, xor_data


def test_symmetry_data_has_64_vectors_8_symmetric():
    X, T = symmetry_data()
    assert X.shape == (64, 6) and len({tuple(r) for r in X.tolist()}) == 64
    assert int(T.sum()) == 8
    for x, t in zip(X.tolist(), T.flatten().tolist()):
        assert t == float(x == x[::-1])


def test_recorded_sweep_is_the_first_meeting_the_criterion():
    o = run("xor", seeds=16, max_sweeps=600, seed=1)
    X, T = xor_data()
    # replay seed-by-seed with plain updates and compare the first sweep within 0.2
    ens = Ensemble(16, [2, 2, 1], dtype=torch.float64, seed=1, init="uniform", init_range=0.3)
    vel = {k: torch.zeros_like(p) for k, p in ens.params.items()}
    first = torch.full((16,), -1)
    for sweep in range(601):
        y = ens.forward(X)
        ok = (y - T).abs().amax((1, 2)) < 0.2
        first[(first < 0) & ok] = sweep
        _, g = ens.loss_and_grads(X, T)
        for k, p in ens.params.items():
            vel[k] = 0.9 * vel[k] - 0.5 * g[k]
            p += vel[k]
    assert torch.equal(first, o.sweeps_within_0_2)
    assert int((o.sweeps_within_0_2 >= 0).sum()) > 0  # some converge within 600 sweeps


def test_right_side_criterion_is_never_later_than_within_0_2():
    o = run("xor", seeds=32, max_sweeps=800, seed=2)
    both = (o.sweeps_within_0_2 >= 0)
    assert bool((o.sweeps_right_side[both] >= 0).all())
    assert bool((o.sweeps_right_side[both] <= o.sweeps_within_0_2[both]).all())


def test_stats_and_table():
    sweeps = torch.tensor([100, 200, 300, -1])
    o = Outcome("symmetry", 4, 1000, sweeps, sweeps, 250, 0.0)
    s = o.stats(sweeps)
    assert s["converged"] == 3 and s["fraction_not_converged"] == 0.25 and s["median"] == 200
    assert s["fraction_converged_by_published"] == 0.5  # 100 and 200 of 4 seeds by sweep 250
    assert "| symmetry | every output within 0.2 | 4 | 3 | 25.0 % | 200 |" in table([o])
