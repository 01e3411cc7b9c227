"""The handgrad command: exit codes 0/1/2, one-line errors, --json holding exactly one document."""
import json
import subprocess
import sys

import pytest
import torch

from handgrad import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_and_prints_a_table(capsys):
    code, out, err = run(capsys, "check")
    assert code == 0
    assert "W1" in out and "hand vs autograd" in out and "hand vs fd" in out and "PASS" in out


def test_check_json_is_one_document_and_table_goes_to_stderr(capsys):
    code, out, err = run(capsys, "check", "--sizes", "5,4,4,3", "--loss", "cross_entropy", "--json")
    assert code == 0
    doc = json.loads(out)  # exactly one JSON document on stdout
    assert doc["ok"] is True and {r["tensor"] for r in doc["rows"]} >= {"W1", "b3", "delta3"}
    assert "hand vs autograd" in err


@pytest.mark.parametrize("extra", [["--activation", "relu", "--no-bias"], ["--activation", "tanh", "--loss", "mse"],
                                   ["--dtype", "float32", "--batch", "1"]])
def test_check_variants_pass(capsys, extra):
    assert run(capsys, "check", *extra)[0] == 0


def test_chapter_demonstration_exits_0_and_shows_elements(capsys):
    code, out, err = run(capsys, "check", "--chapter")
    assert code == 0
    assert "REJECTED" in out and "w[0,0]" in out


def test_check_exits_1_on_a_mismatch(capsys, monkeypatch):
    from handgrad.mlp import MLP
    real = MLP.loss_and_grads

    def wrong(self, X, T, return_deltas=False):
        out = real(self, X, T, return_deltas)
        out[1]["W2"] = out[1]["W2"] * 1.01
        return out

    monkeypatch.setattr(MLP, "loss_and_grads", wrong)
    code, out, err = run(capsys, "check")
    assert code == 1 and "FAIL: W2" in out


@pytest.mark.parametrize("argv, needle", [
    (["check", "--sizes", "4"], "sizes"),
    (["check", "--sizes", "4,0,2"], "positive widths"),
    (["check", "--sizes", "a,b"], "--sizes"),
    (["check", "--loss", "hinge"], "loss"),
    (["check", "--activation", "swish"], "activation"),
    (["check", "--alpha", "0"], "alpha"),
    (["check", "--alpha", "-1"], "alpha"),
    (["check", "--dtype", "int8"], "dtype"),
    (["check", "--batch", "0"], "--batch"),
    (["check", "--unknown-flag"], "unrecognized"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_exits_2_with_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is present")
def test_cuda_without_gpu_exits_2(capsys):
    code, out, err = run(capsys, "check", "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err


def test_console_entry_point_runs_as_a_module():
    p = subprocess.run([sys.executable, "-m", "handgrad", "check", "--sizes", "3,2,1", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] is True


# ---------------------------------------------------------------- train
def test_train_xor_json_reaches_target(capsys):
    code, out, err = run(capsys, "train", "--data", "xor", "--json", "--verify-every", "200")
    assert code == 0
    doc = json.loads(out)
    assert doc["result"]["stopped_reason"] == "target" and doc["result"]["final_loss"] <= 0.2
    assert doc["result"]["checks_run"] > 0 and doc["result"]["failed_report"] is None
    assert "stopped: target" in err


def test_train_prints_accuracy_for_a_real_set(capsys):
    code, out, err = run(capsys, "train", "--data", "breast-cancer", "--epochs", "5")
    assert code == 0 and "test accuracy" in out


def test_train_user_csv(capsys, tmp_path):
    rows = ["f1,f2,label"] + [f"{i % 7},{(i * 3) % 5},{int(i % 7 > 3)}" for i in range(60)]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "20", "--json")
    assert code == 0 and json.loads(out)["result"]["train_accuracy"] > 0.9


def test_train_stops_with_exit_1_on_a_verification_mismatch(capsys, monkeypatch):
    from handgrad.fast import FastStep
    real = FastStep.loss_and_grads

    def wrong(self, X, T, return_deltas=False):
        out = real(self, X, T, return_deltas)
        out[1]["W1"] = out[1]["W1"] + 0.5
        return out

    monkeypatch.setattr(FastStep, "loss_and_grads", wrong)
    code, out, err = run(capsys, "train", "--data", "iris", "--verify-every", "10")
    assert code == 1 and "FAIL: W1" in out and "verify-mismatch" in out


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "nope"], "--data: expected one of"),
    (["train", "--data", "missing.csv"], "missing.csv"),
    (["train", "--data", "xor", "--batch", "many"], "--batch"),
    (["train", "--data", "xor", "--eta", "-1"], "eta"),
    (["train", "--data", "xor", "--momentum", "1.5"], "momentum"),
    (["train", "--data", "xor", "--hidden", "0"], "hidden"),
    (["train", "--data", "xor", "--device", "cuda"], "device"),
    (["train"], "--data"),
])
def test_train_bad_usage_exits_2_with_one_line(capsys, argv, needle):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_train_ragged_csv_names_file_and_line(capsys, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1,2,0\n3,4,1\n5,1\n")
    code, out, err = run(capsys, "train", "--data", str(path))
    assert code == 2 and "bad.csv" in err and "line 3" in err


def test_check_per_sample_and_hvp_reports(capsys):
    code, out, err = run(capsys, "check", "--sizes", "3,4,2", "--batch", "4", "--per-sample", "--hvp", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and set(doc) == {"ok", "gradients", "per_sample", "hvp", "gauss_newton"}
    assert {r["comparison"] for r in doc["hvp"]["rows"]} >= {"H v: hand vs fd", "H v: hand vs autograd (double backward)"}
    assert "per-sample: hand vs vmap(grad)" in err


def test_check_hvp_fails_when_a_term_is_dropped(capsys, monkeypatch):
    import handgrad.hvp as hvp_mod

    original = hvp_mod.hvp_report
    monkeypatch.setattr(hvp_mod, "hvp_report", lambda *a, **kw: original(*a, **kw, _omit=("f2",))
                        if not kw.get("gauss_newton") else original(*a, **kw))
    code, out, err = run(capsys, "check", "--sizes", "3,4,2", "--hvp")
    assert code == 1 and "FAIL" in out


def test_reproduce_writes_table_and_json(capsys, tmp_path):
    code, out, err = run(capsys, "reproduce", "rumelhart1986", "--seeds", "8", "--max-sweeps", "300",
                         "--out", str(tmp_path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [o["problem"] for o in doc["outcomes"]] == ["symmetry", "xor"]
    assert all(o["seeds"] == 8 and o["max_sweeps"] == 300 for o in doc["outcomes"])
    saved = json.loads((tmp_path / "rumelhart1986.json").read_text())
    assert saved["table"] == doc["table"] and "| symmetry | every output within 0.2 | 8 |" in doc["table"]


@pytest.mark.parametrize("argv, named", [(["--seeds", "0"], "--seeds"), (["--max-sweeps", "-3"], "--max-sweeps"),
                                         (["--study-typo"], "unrecognized")])
def test_reproduce_bad_usage_exits_2(capsys, argv, named):
    code, out, err = run(capsys, "reproduce", "rumelhart1986", *argv)
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1


def test_closed_stdout_pipe_ends_quietly():
    """`handgrad check | head -1`: no BrokenPipeError traceback, exit 141 (128 + SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "handgrad", "check", "--sizes", "4,3,2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Broken" not in err, err


def test_bad_sizes_name_the_option(capsys):
    code, out, err = run(capsys, "check", "--sizes", "a,b")
    assert code == 2 and "argument --sizes: expected comma-separated integer widths" in err and "_sizes" not in err


def test_bad_data_names_the_option(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--data", str(tmp_path / "nope.csv"))
    assert code == 2 and err.startswith("handgrad: error: --data: expected an existing CSV file"), err


@pytest.mark.parametrize("argv, needle", [
    (["check", "--seed", "18446744073709551615"], "--seed: expected an integer in 0.."),
    (["check", "--batch", "10000000000"], "--batch: expected a batch size in 1.."),
    (["check", "--sizes", "1000000,1000000,2"], "not enough memory for the sizes asked for"),
    (["check", "--chapter", "--hvp"], "--chapter: expected alone"),
    (["reproduce", "rumelhart1986", "--seed", "-1"], "--seed"),
    (["train", "--data", "xor", "--output-activation", "tanh"], "--output-activation: expected no such option"),
])
def test_more_bad_usage_exits_2_with_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_reproduce_checks_its_output_files_before_running(capsys, tmp_path):
    (tmp_path / "rumelhart1986.json").mkdir()
    code, out, err = run(capsys, "reproduce", "rumelhart1986", "--seeds", "2", "--max-sweeps", "3", "--out", str(tmp_path))
    assert code == 2 and "rumelhart1986.json" in err and "not a regular file" in err and "sweep" not in err
