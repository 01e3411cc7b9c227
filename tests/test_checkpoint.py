"""Checkpoints: killed or interrupted runs resume bit for bit; bad checkpoints are refused and left alone;
a crash while writing keeps the previous checkpoint; non-finite training stops at the exact update."""
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from handgrad import checkpoint as ckio
from handgrad import cli
from handgrad import train as train_mod
from handgrad.data import load_dataset
from handgrad.errors import HandgradInputError
from handgrad.train import TrainingInterrupted, build_net, default_config, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def iris():
    return load_dataset("iris", seed=0)


def _handgrad(*args):
    return [sys.executable, "-m", "handgrad", "train", *args]


def _equal_params(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _same_run(ck: dict, ref: dict) -> None:
    """Bit for bit: parameters, momentum, counters, generator state and the loss history."""
    assert _equal_params(ck["params"], ref["params"])
    assert _equal_params(ck["velocity"], ref["velocity"])
    for key in ("epoch", "steps", "batch_in_epoch", "stopped_reason", "loss"):
        assert ck[key] == ref[key], key
    assert torch.equal(ck["epoch_rng_state"], ref["epoch_rng_state"])
    assert torch.equal(ck["history"]["epoch"], ref["history"]["epoch"])
    assert torch.equal(ck["history"]["loss"], ref["history"]["loss"])


def _wait_for(path: Path, proc, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.01)


# ------------------------------------------------------------------ SIGKILL at a random moment
KILL_RUNS = {  # (extra CLI arguments, --checkpoint-every): long enough to be killed mid-run
    "mini-batch": (["--data", "digits", "--epochs", "60"], 37),      # 43 batches of 32 an epoch
    "online": (["--data", "iris", "--batch", "online", "--epochs", "40"], 41),  # 114 picks an epoch
}


@pytest.mark.parametrize("mode", list(KILL_RUNS))
def test_sigkill_at_a_random_moment_then_resume_is_bit_for_bit(tmp_path, mode):
    args, every = KILL_RUNS[mode]
    ref_path, path = tmp_path / "ref.pt", tmp_path / "run.pt"
    subprocess.run(_handgrad(*args, "--checkpoint", str(ref_path)), env=ENV, cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)  # the uninterrupted run
    ref = torch.load(ref_path, weights_only=True)
    assert ref["stopped_reason"] == "epochs"
    rng = random.Random(f"{mode}-{os.getpid()}-{time.time()}")
    kills, resumed = 0, False
    for attempt in range(6):
        cmd = _handgrad(*args, "--checkpoint", str(path), "--checkpoint-every", str(every),
                        *(["--resume"] if resumed else []))
        proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 2:  # kill the first run and the first resumed one, at random, once a checkpoint exists
            if not resumed:
                _wait_for(path, proc)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
                kills += 1
                resumed = True
                ck = ckio.load(path)  # never torn: the previous or the new checkpoint
                assert ck["stopped_reason"] is None and 0 < ck["steps"] < ref["steps"]
                continue
            if not resumed:  # it finished before the kill: start again
                path.unlink()
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        break
    assert kills >= 1, "the run was never killed mid-way"
    _same_run(torch.load(path, weights_only=True), ref)


# ------------------------------------------------------------------ SIGINT (Ctrl-C)
def test_sigint_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    args = ["--data", "digits", "--epochs", "40"]
    ref_path, path = tmp_path / "ref.pt", tmp_path / "ck.pt"
    subprocess.run(_handgrad(*args, "--checkpoint", str(ref_path)), env=ENV, cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_handgrad(*args, "--checkpoint", str(path)), env=ENV, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(path, proc)  # training is under way
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [s for s in err.splitlines() if s.startswith("handgrad:")]
    assert len(lines) == 1 and "interrupted after step" in lines[0] and "checkpoint saved to" in lines[0]
    command = lines[0].split("resume with: ", 1)[1]
    ck = ckio.load(path)
    assert ck["stopped_reason"] is None and f"step {ck['steps']} " in lines[0]
    done = subprocess.run(shlex.split(command), env=ENV, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {path} at step {ck['steps']}" in done.stdout
    _same_run(torch.load(path, weights_only=True), torch.load(ref_path, weights_only=True))


def test_sigint_without_checkpoint_says_nothing_was_saved(tmp_path):
    proc = subprocess.Popen(_handgrad("--data", "digits", "--epochs", "100000"), env=ENV, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("handgrad train:")
    proc.stdout.readline()
    time.sleep(0.3)  # in the training loop by now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    lines = [s for s in err.splitlines() if s.startswith("handgrad:")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "nothing was saved" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch, engine, at", [(16, "fast", 13), ("online", "fast", 200), ("full", "fast", 3),
                                               (16, "reference", 21), (16, "fast", 16)])
def test_interrupt_mid_epoch_then_resume_is_bit_for_bit(iris, tmp_path, monkeypatch, batch, engine, at):
    """In process: Ctrl-C after update `at` (mid-epoch or on an epoch's last batch) saves, and the
    resumed run ends where an uninterrupted one does."""
    cfg = default_config("iris", batch=batch, engine=engine, epochs=4, verify_every=10)
    ref = build_net(cfg, iris)
    r_ref = train(ref, iris, cfg)
    original = train_mod._FiniteGuard.record

    def record(self, Xb, Tb, step, epoch):
        if step == at:
            signal.raise_signal(signal.SIGINT)  # our handler only sets a flag: the update completes
        return original(self, Xb, Tb, step, epoch)

    monkeypatch.setattr(train_mod._FiniteGuard, "record", record)
    path = tmp_path / "ck.pt"
    with pytest.raises(TrainingInterrupted, match=f"interrupted after step {at} .*saved to") as e:
        train(build_net(cfg, iris), iris, cfg, checkpoint=path)
    assert e.value.saved and e.value.steps == at
    ck = ckio.load(path)
    assert ck["steps"] == at and ck["stopped_reason"] is None
    monkeypatch.setattr(train_mod._FiniteGuard, "record", original)
    net = build_net(cfg, iris)
    r = train(net, iris, cfg, checkpoint=path, resume=True)
    assert _equal_params(net.params, ref.params)
    assert r.history == r_ref.history and r.steps == r_ref.steps and r.checks_run == r_ref.checks_run
    assert r.resumed_from == at and r.final_loss == r_ref.final_loss


# ------------------------------------------------------------------ refused checkpoints, never written
def _cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A finished 3-epoch iris run with --hidden 8, and its bytes."""
    path = tmp_path_factory.mktemp("ck") / "h8.pt"
    assert cli.main(["train", "--data", "iris", "--hidden", "8", "--epochs", "3", "--checkpoint", str(path)]) == 0
    return path, path.read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "weight bytes changed", "text", "tensor", "foreign dict",
                                  "nan params", "short rng state"])
def test_unreadable_or_foreign_file_is_refused_and_left_alone(tmp_path, capsys, small_checkpoint, kind):
    good = small_checkpoint[1]
    path = tmp_path / "bad.pt"
    if kind == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif kind == "corrupt":
        path.write_bytes(good[:200] + bytes(b ^ 0x5A for b in good[200:400]) + good[400:])
    elif kind == "weight bytes changed":  # a well-formed archive whose W1 bytes changed: only the CRC tells
        raw = torch.load(small_checkpoint[0], weights_only=True)["params"]["W1"].numpy().tobytes()
        at = good.index(raw)
        path.write_bytes(good[:at] + b"\x7f\x7f\x7f\x3f" + good[at + 4:])
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "foreign dict":
        torch.save({"model": {"W1": torch.zeros(4, 8)}}, path)
    elif kind == "short rng state":
        ck = torch.load(small_checkpoint[0], weights_only=True)
        ck["epoch_rng_state"] = ck["epoch_rng_state"][:100].clone()
        torch.save(ck, path)
    else:
        ck = torch.load(small_checkpoint[0], weights_only=True)
        ck["params"]["W2"][1, 2] = float("nan")
        torch.save(ck, path)
    before = path.read_bytes()
    code, out, err = _cli(capsys, "train", "--data", "iris", "--checkpoint", str(path), "--resume")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"checkpoint ({path})" in lines[0] and "Traceback" not in err
    if kind == "nan params":
        assert "W2[1, 2] = nan" in lines[0]
    if kind == "short rng state":
        size = torch.Generator().get_state().numel()
        assert f"'epoch_rng_state' as a CPU generator state of {size} bytes, got 100 bytes" in lines[0]
    if kind == "weight bytes changed":
        assert "corrupt file (CRC mismatch in " in lines[0]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


@pytest.mark.parametrize("argv, needle", [
    (["--hidden", "16"], "expected --hidden 8 (the checkpoint's"),
    (["--eta", "0.02"], "expected --eta 0.01"),
    (["--batch", "online"], "expected --batch 16"),
    (["--seed", "3"], "expected --seed 0"),
    (["--engine", "reference"], "expected --engine fast"),
    (["--split-seed", "2"], "expected --split-seed 0"),
    (["--dtype", "float64"], "expected --dtype float32"),
])
def test_conflicting_settings_name_the_setting_and_leave_the_file(capsys, small_checkpoint, argv, needle):
    path, good = small_checkpoint
    code, out, err = _cli(capsys, "train", "--data", "iris", "--checkpoint", str(path), "--resume", *argv)
    assert code == 2 and out == "" and needle in err and str(path) in err
    assert len(err.strip().splitlines()) == 1
    assert path.read_bytes() == good


def test_other_data_is_refused(capsys, small_checkpoint, tmp_path):
    path, good = small_checkpoint
    code, out, err = _cli(capsys, "train", "--data", "digits", "--checkpoint", str(path), "--resume")
    assert code == 2 and "expected --data iris" in err
    # a user's file is not the shipped set, whatever it holds
    csv = tmp_path / "mine.csv"
    csv.write_text("\n".join(f"{i % 5},{(i * 7) % 3},{i % 3},{i % 2},{i % 3}" for i in range(150)) + "\n")
    code, out, err = _cli(capsys, "train", "--data", str(csv), "--checkpoint", str(path), "--resume")
    assert code == 2 and "expected --data iris" in err
    assert path.read_bytes() == good


def test_library_names_the_architecture_mismatch(iris, small_checkpoint):
    path, good = small_checkpoint
    cfg = default_config("iris", epochs=3)  # hidden 16
    with pytest.raises(HandgradInputError) as e:
        train(build_net(cfg, iris), iris, cfg, checkpoint=path, resume=True)
    assert str(e.value) == f"checkpoint ({path}): expected sizes [4, 16, 3] (this run's), got [4, 8, 3]"
    cfg8 = cfg.replace(hidden=[8], eta=0.02)
    with pytest.raises(HandgradInputError, match=r"expected eta 0.02 \(this run's\), got 0.01"):
        train(build_net(cfg8, iris), iris, cfg8, checkpoint=path, resume=True)
    other = load_dataset("iris", seed=1)  # another split: other training rows
    with pytest.raises(HandgradInputError, match="fingerprint"):
        train(build_net(cfg8.replace(eta=0.01), other), other, cfg8.replace(eta=0.01), checkpoint=path,
              resume=True)
    assert path.read_bytes() == good


def test_new_run_never_overwrites_an_existing_file(capsys, small_checkpoint, tmp_path):
    path, good = small_checkpoint
    code, out, err = _cli(capsys, "train", "--data", "iris", "--checkpoint", str(path))
    assert code == 2 and out == "" and "existing file" in err and str(path) in err
    assert path.read_bytes() == good
    for argv, needle in [(["--resume"], "--resume"), (["--checkpoint-every", "3"], "--checkpoint-every"),
                         (["--checkpoint", str(tmp_path / "x.pt"), "--checkpoint-every", "0"], "--checkpoint-every"),
                         (["--checkpoint", str(tmp_path / "no" / "x.pt")], "existing directory"),
                         (["--checkpoint", str(tmp_path / "none.pt"), "--resume"], "no such file")]:
        code, out, err = _cli(capsys, "train", "--data", "iris", *argv)
        assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1, err


def test_resuming_a_finished_run_reports_it_without_writing(capsys, small_checkpoint):
    path, good = small_checkpoint
    mtime = path.stat().st_mtime_ns
    code, out, err = _cli(capsys, "train", "--data", "iris", "--checkpoint", str(path), "--resume")
    assert code == 0 and "already finished" in out and "resumed from" in out
    assert path.read_bytes() == good and path.stat().st_mtime_ns == mtime


def test_resume_may_extend_the_run_and_equals_a_longer_run(iris, tmp_path):
    cfg = default_config("iris", epochs=6)
    ref = build_net(cfg, iris)
    r_ref = train(ref, iris, cfg)
    path = tmp_path / "ck.pt"
    train(build_net(cfg, iris), iris, cfg.replace(epochs=2), checkpoint=path, checkpoint_every=5)
    net = build_net(cfg, iris)
    r = train(net, iris, cfg, checkpoint=path, resume=True)  # epochs may differ: it decides only when to stop
    assert _equal_params(net.params, ref.params) and r.history == r_ref.history


# ------------------------------------------------------------------ the file itself
def test_checkpoint_contents_are_plain_and_weights_only(iris, tmp_path):
    cfg = default_config("iris", epochs=2)
    net = build_net(cfg, iris)
    path = tmp_path / "ck.pt"
    r = train(net, iris, cfg, checkpoint=path, run_info={"split_seed": 0, "test_fraction": 0.25})
    ck = torch.load(path, weights_only=True)
    assert ck["format"] == "handgrad-checkpoint" and ck["version"] == 1
    assert ck["config"] == cfg.to_dict() and ck["network"] == net.spec() and ck["dtype"] == "float32"
    assert ck["data"]["name"] == "iris" and ck["data"]["split_seed"] == 0 and ck["data"]["test_fraction"] == 0.25
    assert _equal_params(ck["params"], net.params) and list(ck["velocity"]) == list(net.params)
    assert ck["epoch"] == 2 and ck["steps"] == r.steps == 16 and ck["batch_in_epoch"] == 0
    assert ck["stopped_reason"] == "epochs" and ck["message"] == r.message
    assert ck["history"]["loss"].tolist() == [l for _, l in r.history]
    assert set(ckio.REQUIRED) <= set(ck)


@pytest.mark.parametrize("every, expected", [(None, [8, 16, 24, 32]), (5, [5, 10, 15, 20, 25, 30, 32])])
def test_checkpoint_cadence(iris, tmp_path, monkeypatch, every, expected):
    saved = []
    real = ckio.save
    monkeypatch.setattr(ckio, "save", lambda p, state: (saved.append(state["steps"]), real(p, state)))
    cfg = default_config("iris", epochs=4)  # 8 updates an epoch
    train(build_net(cfg, iris), iris, cfg, checkpoint=tmp_path / "ck.pt", checkpoint_every=every)
    assert saved == expected  # every N updates (or every epoch) and once at the end


@pytest.mark.parametrize("where", ["replace", "write"])
def test_crash_while_writing_keeps_the_previous_checkpoint(iris, tmp_path, monkeypatch, where):
    cfg = default_config("iris", epochs=4)
    path = tmp_path / "ck.pt"
    calls = [0]
    real_replace, real_save = os.replace, torch.save

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    def save(obj, f):  # dies half-way through the third file
        calls[0] += 1
        if calls[0] == 3:
            f.write(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device")
        return real_save(obj, f)

    if where == "replace":
        monkeypatch.setattr(ckio.os, "replace", replace)
    else:
        monkeypatch.setattr(ckio.torch, "save", save)
    with pytest.raises(HandgradInputError, match=r"checkpoint \(.*ck.pt\).*previous checkpoint.*No space"):
        train(build_net(cfg, iris), iris, cfg, checkpoint=path, checkpoint_every=5)
    ck = ckio.load(path)  # the second checkpoint, whole
    assert ck["steps"] == 10 and ck["stopped_reason"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary file left
    monkeypatch.undo()
    ref = build_net(cfg, iris)
    train(ref, iris, cfg)
    net = build_net(cfg, iris)
    train(net, iris, cfg, checkpoint=path, resume=True)
    assert _equal_params(net.params, ref.params)


# ------------------------------------------------------------------ non-finite training
BAD = re.compile(r"non-finite values at step (\d+) \(epoch (\d+)\): ([Wb]\d)\[(\d+(?:, \d+)?)\] = (nan|inf|-inf)")


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_non_finite_stops_at_the_exact_update_and_keeps_the_last_good_checkpoint(iris, tmp_path, monkeypatch,
                                                                                  engine):
    cfg = default_config("iris", activation="identity", eta=3.0, momentum=0.99, epochs=50, engine=engine)
    path = tmp_path / "ck.pt"
    net = build_net(cfg, iris)
    r = train(net, iris, cfg, checkpoint=path, checkpoint_every=5)
    assert r.stopped_reason == "non-finite", r.message
    m = BAD.search(r.message)
    assert m, r.message
    step, epoch = int(m.group(1)), int(m.group(2))
    assert r.steps == step and r.epochs == epoch - 1 and (step - 1) // 8 + 1 == epoch  # 8 updates an epoch
    assert f"last good checkpoint (step {r.checkpoint_step}) is kept" in r.message
    ck = ckio.load(path)  # finite (load checks), the last multiple of 5 before the bad step
    assert ck["steps"] == (step - 1) // 5 * 5 and ck["stopped_reason"] is None
    # checking after every single update finds the same update and leaves the same parameters
    monkeypatch.setattr(train_mod, "CHECK_FINITE_EVERY", 1)
    each = build_net(cfg, iris)
    r1 = train(each, iris, cfg)
    assert r1.message == r.message.split("; the last good")[0] and r1.steps == r.steps
    for k in net.params:
        torch.testing.assert_close(net.params[k], each.params[k], rtol=0, atol=0, equal_nan=True)
    name, idx = m.group(3), tuple(int(i) for i in m.group(4).split(", "))
    assert not torch.isfinite(net.params[name][idx])


def test_non_finite_cli_exit_1_names_step_tensor_and_element(capsys, tmp_path):
    code, out, err = _cli(capsys, "train", "--data", "letters", "--activation", "identity", "--eta", "1e30",
                          "--checkpoint", str(tmp_path / "ck.pt"))
    assert code == 1 and BAD.search(out), out
    assert "no checkpoint had been written" in out and not (tmp_path / "ck.pt").exists()
