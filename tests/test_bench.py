"""Smoke test of the benchmark suite on the tiniest size: output shape and fields, never a speed."""
import json

from benchmarks import suite
from benchmarks.measure import gemm_shapes, step_flops


def test_flop_count_skips_the_first_layers_input_gradient():
    # 2-2-1 at batch 4: weights 4 and 2; 6*4*6 - 2*4*4 = 112
    assert step_flops([2, 2, 1], 4) == 112
    assert sum(2 * m * k * n for m, k, n in gemm_shapes([2, 2, 1], 4)) == 112
    assert sum(2 * m * k * n for m, k, n in gemm_shapes([64, 32, 10], 32)) == step_flops([64, 32, 10], 32)


def test_quick_suite_on_the_tiniest_size(tmp_path, capsys):
    code = suite.main(["--configs", "0", "--no-compile", "--min-run-time", "0.02", "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert set(doc["environment"]) >= {"torch", "device_name", "threads", "tf32_matmul"}
    methods = {r["method"] for r in doc["rows"]}
    assert methods == {"hand-fast", "hand-reference", "autograd"}
    for r in doc["rows"]:
        assert r["config"] == "2-2-1 (XOR)" and r["batch"] == 4 and r["median_s"] > 0
        assert r["iqr_s"] >= 0 and r["ceiling_gflops"] > 0 and 0 < r["fraction_of_ceiling"]
        assert r["peak_step_bytes"] >= 0 and r["speedup_vs_autograd"] > 0
    md = (tmp_path / "bench-cpu.md").read_text()
    assert "| 2-2-1 (XOR) | 4 | float32 | hand-fast |" in md
    assert "hand-fast" in capsys.readouterr().out


def test_bad_device_exits_2(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        return
    assert suite.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "device" in capsys.readouterr().err
