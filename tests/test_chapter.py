"""The chapter's Eq. 7.24: as printed it is rejected by the oracle, corrected it is accepted."""
import torch

from handgrad import oracle
from handgrad.chapter import (chapter_network, chapter_patterns, demonstrate, dsse_dv,
                              dsse_dw_corrected, dsse_dw_printed)


def test_chapter_network_is_the_4_3_2_logistic_sse_net_without_bias():
    net = chapter_network()
    assert net.sizes == [4, 3, 2] and not net.bias and net.loss == "sse"
    assert list(net.params) == ["W1", "W2"]


def test_corrected_equation_equals_autograd_elementwise():
    for alpha in (0.5, 1.0, 3.0):
        net = chapter_network(alpha=alpha, seed=3)
        X, T = chapter_patterns(batch=5, seed=3)
        _, g = oracle.loss_and_grads(net, X, T)
        # float64, 4-term sums: agreement to a few ulp of the largest element.
        torch.testing.assert_close(dsse_dw_corrected(net, X, T), g["W1"], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(dsse_dv(net, X, T), g["W2"], rtol=1e-10, atol=1e-14)


def test_printed_equation_is_off_by_the_missing_output_factor():
    # With two outputs the missing factor alpha F_o(1-F_o) sits inside the sum over o, so the
    # printed form is not a rescaling of the truth; with ONE output it is exactly that factor.
    net = chapter_network(alpha=2.0, seed=1)
    net.params["W2"] = net.params["W2"][:, :1].contiguous()
    net.sizes = [4, 3, 1]
    X, T = chapter_patterns(batch=1, seed=1)
    T = T[:, :1]
    _, g = oracle.loss_and_grads(net, X, T)
    F_h = torch.sigmoid(2.0 * (X @ net.params["W1"]))
    F_o = torch.sigmoid(2.0 * (F_h @ net.params["W2"]))
    factor = float(2.0 * F_o * (1 - F_o))
    # float64, single pattern: the identity holds to rounding.
    torch.testing.assert_close(dsse_dw_printed(net, X, T) * factor, g["W1"], rtol=1e-10, atol=1e-15)


def test_demonstration_rejects_printed_and_accepts_corrected():
    demo = demonstrate()
    assert demo.ok
    assert not demo.printed.ok and demo.corrected.ok
    failed = {r.tensor for r in demo.printed.failures}
    assert failed == {"W1"}  # only the input-to-hidden weights are wrong; v and the deltas agree
    w_rows = [r for r in demo.printed.rows if r.tensor == "W1"]
    assert {r.comparison for r in w_rows} >= {"hand vs autograd", "hand vs fd"}
    assert all(r.mismatched == 12 for r in w_rows if r.comparison != "autograd vs fd")
    text = str(demo)
    assert "REJECTED" in text and "w[3,2]" in text


def test_demonstration_holds_for_other_seeds_gains_and_batches():
    for seed, alpha, batch in ((1, 0.5, 1), (2, 1.0, 4), (3, 4.0, 2)):
        assert demonstrate(alpha=alpha, seed=seed, batch=batch).ok
