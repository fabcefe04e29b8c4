"""Training: gradients reach only the prompt, causality of the slots, determinism, resume."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import sklens
from sklens.data.format import encode, iter_batches, split_batch
from sklens.prompt.forward import completion_logprobs, prefill
from sklens.prompt.training import frozen, plateau, train_logprobs
from tests.helpers import ROOT, reference_cache


def test_gradient_reaches_only_the_prompt(qwen, examples):
    for p in qwen.parameters():  # as a user's freshly built, trainable model
        p.requires_grad_(True)
    prompt = sklens.SoftPrompt.init_for(qwen, 4, seed=0)
    batch = next(iter_batches(qwen, encode(qwen, examples[:4], 4), 4, 4))
    with frozen(qwen), prompt.attached(qwen) as writer:
        writer.start(batch)
        completion_logprobs(qwen, batch).mean_loss.mean().backward()
    assert prompt.embedding.grad is not None and prompt.embedding.grad.abs().sum() > 0
    assert all(p.grad is None for p in qwen.parameters())
    assert all(p.requires_grad for p in qwen.parameters())  # flags restored afterwards


@pytest.mark.parametrize("arch", ["qwen", "llama"])
def test_reusing_the_prefix_gives_the_one_pass_numbers(arch, request, examples):
    """Training's split pass (prefix without autograd, then slots + completion from its cached
    keys/values) equals one pass over the whole right-padded rows: values and gradients."""
    model = request.getfixturevalue(arch)
    prompt = sklens.SoftPrompt.init_for(model, 4, seed=0)
    encoded = encode(model, examples, 4)
    order = [5, 0, 17, 3, 11, 8]
    writer = prompt.writer()
    with frozen(model), model.hooks(fwd_hooks=[("hook_embed", writer)]):
        batch = next(iter_batches(model, encoded, 4, len(order), order=order))
        assert batch.slot_start.unique().numel() > 1  # rows of different length: padding matters
        writer.start(batch)
        one = completion_logprobs(model, batch)
        (grad_one,) = torch.autograd.grad(one.mean_loss.mean(), prompt.embedding)
        split = train_logprobs(model, writer, encoded, order)
        (grad_split,) = torch.autograd.grad(split.mean_loss.mean(), prompt.embedding)
        prefix, mask, _ = split_batch(model, encoded, 4, order)
        with writer.paused():
            cache = prefill(model, prefix, mask)
    assert torch.equal(one.mask, split.mask)
    assert (one.logprobs - split.logprobs).abs().max() < 1e-5
    assert (grad_one - grad_split).abs().max() < 1e-5 * grad_one.abs().max()
    assert not any(entry.past_keys.requires_grad for entry in cache.entries)
    assert bool(mask[:, 0].eq(1).all()) and bool(mask[:, -1].eq(0).any())  # padding inside


def test_training_freezes_weights_and_reduces_loss(qwen, examples):
    before = {k: v.clone() for k, v in qwen.state_dict().items()}
    prompt = sklens.train_soft_prompt(
        qwen,
        examples[:32],
        n_slots=4,
        steps=30,
        lr=3e-2,
        batch_size=8,
        val_examples=examples[32:],
        eval_every=10,
        progress=False,
    )
    assert all(torch.equal(before[k], v) for k, v in qwen.state_dict().items())
    val = [h["val_loss"] for h in prompt.history if "val_loss" in h]
    assert len(val) == 4 and val[-1] < val[0] - 0.1
    assert [h["step"] for h in prompt.history if "train_loss" in h] == list(range(1, 31))
    assert prompt.config.training["steps"] == 30 and prompt.config.training["n_train"] == 32


def test_instruction_positions_unaffected_completion_positions_affected(qwen, examples):
    a = sklens.SoftPrompt.init_for(qwen, 4, seed=0)
    b = sklens.SoftPrompt.init_for(qwen, 4, seed=1)
    names = {"blocks.1.hook_resid_post"}
    _, start, _, cache_a = reference_cache(qwen, a, examples[0], names)
    _, _, _, cache_b = reference_cache(qwen, b, examples[0], names)
    ra, rb = cache_a["blocks.1.hook_resid_post"][0], cache_b["blocks.1.hook_resid_post"][0]
    assert torch.equal(ra[:start], rb[:start])
    assert (ra[start + 4 :] - rb[start + 4 :]).abs().max() > 1e-3


def test_training_is_deterministic_for_a_seed(qwen, examples):
    kw = dict(n_slots=3, steps=6, batch_size=4, progress=False)
    p1 = sklens.train_soft_prompt(qwen, examples[:16], seed=5, **kw)
    p2 = sklens.train_soft_prompt(qwen, examples[:16], seed=5, **kw)
    p3 = sklens.train_soft_prompt(qwen, examples[:16], seed=6, **kw)
    assert torch.equal(p1.embedding, p2.embedding)
    assert not torch.equal(p1.embedding, p3.embedding)


def test_resume_after_a_kill_equals_an_uninterrupted_run(qwen, examples, tmp_path, monkeypatch):
    kw = dict(n_slots=3, batch_size=4, seed=1, steps=10, progress=False, checkpoint_every=4)
    full = sklens.train_soft_prompt(qwen, examples[:16], **kw)

    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # killed during step 7: only the step-4 checkpoint exists
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        sklens.train_soft_prompt(qwen, examples[:16], checkpoint_dir=tmp_path, **kw)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4

    resumed = sklens.train_soft_prompt(qwen, examples[:16], checkpoint_dir=tmp_path, **kw)
    torch.testing.assert_close(resumed.embedding, full.embedding, rtol=0, atol=1e-6)
    assert [h["step"] for h in resumed.history] == list(range(1, 11))


def test_resume_refuses_other_settings(qwen, examples, tmp_path):
    kw = dict(n_slots=3, batch_size=4, progress=False, checkpoint_dir=tmp_path)
    sklens.train_soft_prompt(qwen, examples[:8], steps=2, lr=1e-3, **kw)
    with pytest.raises(ValueError, match="other settings \\(lr\\)"):
        sklens.train_soft_prompt(qwen, examples[:8], steps=2, lr=2e-3, **kw)


def test_training_argument_errors(qwen, examples):
    with pytest.raises(ValueError, match="steps or epochs, not both"):
        sklens.train_soft_prompt(qwen, examples, steps=2, epochs=1, progress=False)
    with pytest.raises(ValueError, match="no examples"):
        sklens.train_soft_prompt(qwen, [], steps=2, progress=False)


def test_plateau_rule_on_planted_histories():
    def history(losses, every=10):
        return [{"step": i * every, "val_loss": v} for i, v in enumerate(losses)]

    falling = plateau(history([3.0, 2.0, 1.5, 1.2, 1.1]), patience=2)
    assert not falling["stopped"] and falling["best_step"] == 40
    flat = plateau(history([3.0, 2.0, 2.1, 2.05, 2.01]), patience=2)
    assert flat["stopped"] and flat["best_step"] == 10 and flat["best_val_loss"] == 2.0
    # a gain smaller than min_delta is no gain
    tiny = plateau(history([3.0, 2.0, 1.999, 1.998]), patience=2, min_delta=0.01)
    assert tiny["stopped"] and tiny["best_step"] == 10


def test_training_stops_on_a_plateau_and_a_resume_stops_there_too(qwen, examples, tmp_path):
    """With a learning rate too small to move the loss, every evaluation after the first is no
    better by min_delta: training stops after patience × eval_every steps, not at `steps`; a
    second call on the same checkpoint trains no further."""
    kw = dict(
        n_slots=3,
        lr=1e-9,
        steps=100,
        batch_size=4,
        val_examples=examples[40:48],
        eval_every=2,
        patience=3,
        min_delta=1e-3,
        progress=False,
    )
    prompt = sklens.train_soft_prompt(qwen, examples[:40], checkpoint_dir=tmp_path, **kw)
    info = plateau(prompt.history, 3, 1e-3)
    assert info["stopped"] and info["steps"] == 6 and info["n_evaluations"] == 4
    again = sklens.train_soft_prompt(qwen, examples[:40], checkpoint_dir=tmp_path, **kw)
    assert again.history == prompt.history
    torch.testing.assert_close(again.embedding, prompt.embedding, rtol=0, atol=0)
    fresh = sklens.train_soft_prompt(qwen, examples[:40], **{**kw, "lr": 3e-2, "patience": 50})
    assert plateau(fresh.history, 50)["steps"] == 100  # no plateau: the maximum


def test_patience_needs_held_out_examples(qwen, examples):
    with pytest.raises(ValueError, match="patience must be at least 1 and needs val_examples"):
        sklens.train_soft_prompt(qwen, examples, steps=5, patience=2, progress=False)


def _child(checkpoint_dir, steps, delay=0.3):
    """``tests/train_child.py`` in a new process (the same environment, this checkout first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train_child", str(checkpoint_dir), str(steps), str(delay)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc, marker=None, after=None):
    """SIGKILL ``proc`` when it prints ``marker``, or ``after`` seconds after it started."""
    for line in proc.stdout:
        if line.strip() == marker or (after is not None and line.strip() == "started"):
            if after is not None:
                time.sleep(after)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the child ended by itself ({proc.returncode})"


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_prompt(tmp_path):
    """Real kill -9 inside a checkpoint write (half written; written but not renamed) and at
    random moments, then resume: the prompt and history equal an uninterrupted run bit for bit."""
    steps = 10
    reference = _child(tmp_path / "reference", steps, delay=0)
    reference.communicate()
    assert reference.returncode == 0
    expected = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=True)

    run = tmp_path / "killed"
    rng = random.Random(7)
    kills = [{"marker": "half 3"}, {"marker": "full 5"}, {"after": rng.uniform(0.2, 1.0)}]
    for kill in kills:
        _kill_when(_child(run, steps), **kill)
        if "marker" in kill:  # inside the write: its temporary is left behind
            assert list(run.glob(".*.tmp"))
    finished = _child(run, steps)
    finished.communicate()
    assert finished.returncode == 0
    got = torch.load(run / "checkpoint.pt", weights_only=True)
    assert got["step"] == steps and torch.equal(got["embedding"], expected["embedding"])
    assert got["history"] == expected["history"]
    assert not list(run.glob(".*.tmp"))  # the stale temporaries were removed by later writes


def test_a_corrupted_or_inconsistent_checkpoint_is_refused(qwen, examples, tmp_path):
    kw = dict(n_slots=3, batch_size=4, steps=2, progress=False, checkpoint_dir=tmp_path)
    sklens.train_soft_prompt(qwen, examples[:8], **kw)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["optimizer"]["state"][0]["step"] = torch.tensor(1.0)  # optimizer one step behind
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"checkpoint.pt is inconsistent: it says step 2 but its opt"
    ):
        sklens.train_soft_prompt(qwen, examples[:8], **kw)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"checkpoint.pt is corrupted .*delete .* to start"):
        sklens.train_soft_prompt(qwen, examples[:8], **kw)


def test_resume_refuses_another_model_or_prompt_length(qwen, llama, examples, tmp_path):
    kw = dict(batch_size=4, steps=2, progress=False, checkpoint_dir=tmp_path)
    sklens.train_soft_prompt(qwen, examples[:8], n_slots=3, **kw)
    with pytest.raises(
        ValueError, match=r"other settings \(d_model, model\)|other settings \(model\)"
    ):
        sklens.train_soft_prompt(llama, examples[:8], n_slots=3, **kw)
    with pytest.raises(ValueError, match=r"other settings \(n_slots\)"):
        sklens.train_soft_prompt(qwen, examples[:8], n_slots=4, **kw)


def test_non_finite_training_is_refused(qwen, examples):
    with pytest.raises(ValueError, match="lr must be a finite number above 0"):
        sklens.train_soft_prompt(qwen, examples[:8], steps=2, lr=float("inf"), progress=False)
    with pytest.raises(RuntimeError, match=r"training diverged: .* step \d+ .*lower the learning"):
        sklens.train_soft_prompt(qwen, examples[:8], n_slots=3, steps=5, lr=1e30, progress=False)


def _scripted_losses(monkeypatch, losses):
    """Held-out losses read from a script, and the prompt as it was at each evaluation."""
    from sklens.prompt import training

    seen = []

    def scripted(model, prompt, encoded, batch_size):
        seen.append(prompt.embedding.detach().clone())
        return losses[len(seen) - 1]

    monkeypatch.setattr(training, "_mean_loss", scripted)
    return seen


@pytest.mark.parametrize("restore_best", [True, False])
def test_training_keeps_the_best_prompt_not_the_last(qwen, examples, monkeypatch, restore_best):
    """The trial as a researcher: the main job stopped on its plateau with the last held-out loss
    0.518 and the best 0.401, and kept the last. With ``restore_best`` (the default) the prompt
    is the best evaluation's, and ``kept_step`` says which."""
    seen = _scripted_losses(monkeypatch, [3.0, 1.0, 2.0, 2.5, 2.7])  # best at step 1
    prompt = sklens.train_soft_prompt(
        qwen, examples[:8], n_slots=3, steps=10, val_examples=examples[8:12], eval_every=1,
        patience=2, restore_best=restore_best, progress=False,
    )  # fmt: skip
    assert plateau(prompt.history, 2)["best_step"] == 1 and len(seen) == 4  # stopped at step 3
    kept = seen[1] if restore_best else prompt.embedding.detach()
    assert torch.equal(prompt.embedding.detach(), kept)
    assert not torch.equal(seen[1], seen[3])  # training did move the prompt after the best
    assert prompt.config.kept_step == (1 if restore_best else None)


def test_a_resumed_training_keeps_the_same_best_prompt(qwen, examples, tmp_path, monkeypatch):
    losses = [3.0, 1.0, 2.0, 2.5, 2.7]
    kwargs = dict(n_slots=3, steps=10, val_examples=examples[8:12], eval_every=1, patience=2,
                  checkpoint_every=1, progress=False)  # fmt: skip
    _scripted_losses(monkeypatch, losses)
    whole = sklens.train_soft_prompt(qwen, examples[:8], **kwargs)
    ckpt = tmp_path / "ckpt"
    _scripted_losses(monkeypatch, losses)
    from sklens.prompt import training

    real = training._checkpoint
    calls = {"n": 0}

    def dies_after_two(*args, **kw):  # killed after the checkpoint of step 2
        real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_checkpoint", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        sklens.train_soft_prompt(qwen, examples[:8], checkpoint_dir=ckpt, **kwargs)
    monkeypatch.setattr(training, "_checkpoint", real)
    _scripted_losses(monkeypatch, losses[3:])  # the evaluations after the resume
    resumed = sklens.train_soft_prompt(qwen, examples[:8], checkpoint_dir=ckpt, **kwargs)
    assert resumed.config.kept_step == whole.config.kept_step == 1
    assert torch.equal(resumed.embedding, whole.embedding)
