"""``sklens.models.layout``: a HookedTransformer's weights held in the layout its forward reads.

TransformerLens copies every weight matrix into a transposed layout on each forward pass
(``W_in.T.contiguous()``, ``rearrange(W_Q, ...)``). Inside ``linear_layout`` those copies are
gone and the logits are bit-identical; afterwards the weights are contiguous and unchanged. The
copies are counted with torch's profiler (``aten::copy_`` calls of a weight's transposed shape).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import sklens
from sklens.models.layout import _targets, keep_storage, linear_layout
from sklens.models.load import ARCHITECTURES
from sklens.scanning import metrics
from tests.helpers import needs_hooked
from tests.unit.test_architectures import HF_NAMES

HOOKED = [arch for arch, name in HF_NAMES.items() if "hooked" in ARCHITECTURES[name]]


def _transposed_shapes(model) -> set[tuple[int, ...]]:
    """The shapes of the copies TransformerLens's forward makes of the weights it transposes."""
    shapes = set()
    for module in model.modules():
        for name, order in _targets(module).items():
            weight = module._parameters.get(name)
            if weight is not None:
                permuted = weight.permute(order).shape
                shapes |= {tuple(permuted), (permuted[0], permuted[1:].numel())}
                shapes.add((permuted[: len(order) - 1].numel(), permuted[-1]))
    return shapes


def _weight_copies(model, fn) -> int:
    """How many ``aten::copy_`` calls ``fn`` makes of a tensor shaped like a transposed weight."""
    shapes = _transposed_shapes(model)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sum(
        e.count
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key == "aten::copy_" and e.input_shapes and tuple(e.input_shapes[0]) in shapes
    )


def _contiguous_copy(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _unchanged(model, before) -> bool:
    return all(
        p.is_contiguous() and torch.equal(p, before[name]) for name, p in model.named_parameters()
    )


@needs_hooked  # the layout is HookedTransformer's; a bridge is left as it is (below)
@pytest.mark.parametrize("arch", HOOKED)
def test_laid_out_forward_is_bit_identical_and_copies_no_weight(arch):
    model = sklens.load_model(sklens.tiny_checkpoint(arch, seed=2), backend="hooked", device="cpu")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    before = _contiguous_copy(model)
    with torch.no_grad():
        plain = model(tokens)
        assert _weight_copies(model, lambda: model(tokens)) > 0  # what the layout removes
        with linear_layout(model):
            assert torch.equal(model(tokens), plain)
            assert _weight_copies(model, lambda: model(tokens)) == 0
            assert not all(p.is_contiguous() for p in model.parameters())
    assert _unchanged(model, before)


def test_nested_blocks_keep_the_outer_layout_and_an_error_restores_it(qwen):
    before = _contiguous_copy(qwen)
    w_in = qwen.blocks[0].mlp.W_in
    with pytest.raises(RuntimeError, match="boom"), linear_layout(qwen):
        with linear_layout(qwen):
            assert not w_in.is_contiguous() and w_in.T.is_contiguous()
        assert not w_in.is_contiguous()  # the inner block left the layout to the outer one
        raise RuntimeError("boom")
    assert _unchanged(qwen, before)


def test_a_bridge_is_left_as_it_is(qwen_dir):
    bridge = sklens.load_model(qwen_dir, backend="bridge", device="cpu")
    strides = {name: p.stride() for name, p in bridge.named_parameters()}
    with linear_layout(bridge):
        assert {name: p.stride() for name, p in bridge.named_parameters()} == strides


@needs_hooked  # the layout is HookedTransformer's; a bridge is left as it is (below)
def test_a_scan_copies_each_weight_twice_at_most_not_once_per_batch(qwen, examples):
    """A pass of many batches lays the weights out once (a copy in, a copy back)."""
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    tokens = torch.randint(0, qwen.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        per_pass = _weight_copies(qwen, lambda: qwen(tokens))

    def scan():
        sklens.scan(qwen, prompt, examples, metrics.label("a"), batch_size=4, progress=False)

    before = _contiguous_copy(qwen)
    assert len(examples) // 4 >= 10
    assert _weight_copies(qwen, scan) <= 2 * per_pass
    assert _unchanged(qwen, before)


@needs_hooked  # the layout is HookedTransformer's; a bridge is left as it is (below)
def test_training_holds_the_layout_and_leaves_the_weights_as_they_were(qwen, examples):
    tokens = torch.randint(0, qwen.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        per_pass = _weight_copies(qwen, lambda: qwen(tokens))
    before = _contiguous_copy(qwen)

    def train():  # 6 steps, each a pass over the instruction and one over slots and completion
        sklens.train_soft_prompt(
            qwen, examples[:16], n_slots=2, steps=6, batch_size=4, progress=False
        )

    assert _weight_copies(qwen, train) <= 2 * per_pass  # not once per pass (12 passes)
    assert _unchanged(qwen, before)


@needs_hooked  # the layout is HookedTransformer's
def test_keep_storage_leaves_every_parameter_where_it_was_and_changes_no_number(qwen, examples):
    """Outside ``keep_storage`` a scan hands back the same Parameter objects, values and strides
    (new storage); inside it, the very same storage too, and the scan is bit-identical."""
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    params = dict(qwen.named_parameters())
    strides = {name: p.stride() for name, p in params.items()}
    pointers = {name: p.data_ptr() for name, p in params.items()}

    def scan():
        return sklens.scan(qwen, prompt, examples, metrics.label("a"), batch_size=4, progress=False)

    with keep_storage():
        kept = scan()
    assert {name: p.data_ptr() for name, p in qwen.named_parameters()} == pointers
    laid_out = scan()
    assert torch.equal(kept.corr, laid_out.corr)
    after = dict(qwen.named_parameters())
    assert all(after[name] is p for name, p in params.items())  # the same objects
    assert {name: p.stride() for name, p in after.items()} == strides
    assert {name: p.data_ptr() for name, p in after.items()} != pointers  # new storage, as said
