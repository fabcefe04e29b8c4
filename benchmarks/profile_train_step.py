"""Where a sklens training step spends its time (torch.profiler), next to HF + PEFT's step.

Prints the forward / backward split of each and the top operators of sklens's step by self CPU
time, to explain the ratio that train_step.py measures.
"""

from __future__ import annotations

import time

from common import examples, parser
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM

import sklens
from sklens.data.format import encode, iter_batches
from sklens.models.layout import linear_layout
from sklens.prompt.training import frozen, train_logprobs


def split(forward, repeats: int = 3) -> tuple[float, float]:
    fwd, bwd = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = forward()
        mid = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        fwd.append(mid - start)
        bwd.append(end - mid)
    return sorted(fwd[1:])[repeats // 2], sorted(bwd[1:])[repeats // 2]


def main() -> None:
    args = parser(__doc__).parse_args()
    model = sklens.load_model(args.model, device=args.device)
    data = examples(args.batch_size)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    encoded = encode(model, data, args.n_slots)
    batch = next(iter_batches(model, encoded, args.n_slots, args.batch_size))
    writer = prompt.writer()

    def sklens_loss():  # the step train_soft_prompt takes (prefix reused)
        with model.hooks(fwd_hooks=[("hook_embed", writer)]):
            return train_logprobs(model, writer, encoded, batch.indices).mean_loss.mean()

    from peft import PromptTuningConfig, get_peft_model

    checkpoint = (
        sklens.gguf_to_checkpoint(sklens.models.load.embedded_model_path())
        if args.model == sklens.DEFAULT_MODEL
        else args.model
    )
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(checkpoint),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.n_slots),
    )
    labels = batch.tokens[:, args.n_slots :].clone()
    labels[batch.attention_mask[:, args.n_slots :] == 0] = -100

    def peft_loss():
        return peft_model(
            input_ids=batch.tokens[:, args.n_slots :],
            attention_mask=batch.attention_mask[:, args.n_slots :],
            labels=labels,
        ).loss

    with frozen(model), linear_layout(model):  # as train_soft_prompt runs
        s_fwd, s_bwd = split(sklens_loss)
        p_fwd, p_bwd = split(peft_loss)
        print(f"sklens  forward {s_fwd * 1000:.0f} ms  backward {s_bwd * 1000:.0f} ms")
        print(f"PEFT    forward {p_fwd * 1000:.0f} ms  backward {p_bwd * 1000:.0f} ms")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sklens_loss().backward()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
