"""One soft-prompt training step: sklens vs plain HF (inputs_embeds) vs HF + PEFT prompt tuning.

Same model weights, batch and sequence lengths. sklens runs a HookedTransformer with the prompt
written at hook_embed after the instruction; HF computes the loss from full logits; PEFT prepends
its virtual tokens (its own placement). Each of sklens's savings is timed on its own: one pass
with full logits, one pass with logits only at completion positions, the text before the slots
run once without autograd (the slots and completion continuing from its cached keys/values), and
the training step as ``train_soft_prompt`` takes it, with the weights also held in the layout
the forward reads (``sklens.models.layout``, a second copy of the model). The methods run in
interleaved rounds; ratios are the median and range of the per-round ratios.
"""

from __future__ import annotations

import statistics

import torch
from common import examples, interleaved, parser, ratios, write_results
from transformers import AutoModelForCausalLM

import sklens
from sklens.data.format import encode, iter_batches
from sklens.models.layout import linear_layout
from sklens.prompt.forward import completion_logprobs
from sklens.prompt.training import frozen, train_logprobs


def main() -> None:
    args = parser(__doc__).parse_args()
    model = sklens.load_model(args.model, device=args.device, dtype=args.dtype)
    checkpoint = (
        sklens.gguf_to_checkpoint(sklens.models.load.embedded_model_path())
        if args.model == sklens.DEFAULT_MODEL
        else args.model
    )
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, args.dtype)).to(
        args.device
    )
    hf.requires_grad_(False)
    data = examples(args.batch_size)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    batch = next(
        iter_batches(model, encode(model, data, args.n_slots), args.n_slots, args.batch_size)
    )
    n_tokens_total = int(batch.attention_mask.sum())
    opt = torch.optim.AdamW(prompt.parameters(), lr=3e-3)

    encoded = encode(model, data, args.n_slots)
    writer = prompt.writer()
    targets = batch.tokens[:, 1:]
    completion = torch.zeros_like(targets, dtype=torch.bool)
    for b in range(len(batch.indices)):
        start, length = int(batch.completion_start[b]), int(batch.completion_len[b])
        completion[b, start - 1 : start - 1 + length] = True

    def full_logits_loss(model) -> torch.Tensor:
        logits = model(batch.tokens, attention_mask=batch.attention_mask)[:, :-1]
        logprobs = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
        per_example = -(logprobs * completion).sum(1) / completion.sum(1)
        return per_example.mean()

    def sklens_step(model, loss_fn) -> None:
        writer.start(batch)
        with frozen(model), model.hooks(fwd_hooks=[("hook_embed", writer)]):
            loss = loss_fn(model)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def prefix_reused_loss(model) -> torch.Tensor:
        return train_logprobs(model, writer, encoded, batch.indices).mean_loss.mean()

    # held laid out while timed
    laid_out = sklens.load_model(args.model, device=args.device, dtype=args.dtype)
    sklens_variants = (
        ("sklens, one pass, full logits", model, full_logits_loss),
        (
            "sklens, one pass, completion logits",
            model,
            lambda model: completion_logprobs(model, batch).mean_loss.mean(),
        ),
        ("sklens, + prefix reused", model, prefix_reused_loss),
        ("**sklens training step** (+ weights laid out)", laid_out, prefix_reused_loss),
    )

    # plain HF: the same sequences, the prompt inserted into inputs_embeds at the same slots
    soft = torch.nn.Parameter(prompt.embedding.detach().clone())
    hf_opt = torch.optim.AdamW([soft], lr=3e-3)
    labels = torch.full_like(batch.tokens, -100)
    for b in range(len(batch.indices)):
        start, length = int(batch.completion_start[b]), int(batch.completion_len[b])
        labels[b, start : start + length] = batch.tokens[b, start : start + length]

    def hf_step() -> None:
        embeds = hf.get_input_embeddings()(batch.tokens)
        rows = torch.arange(len(batch.indices))[:, None]
        prompt_rows = soft.to(embeds.dtype).expand(len(rows), -1, -1)  # fp32 master, as sklens
        embeds = embeds.index_put((rows, batch.slot_positions), prompt_rows)
        out = hf(inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=labels)
        hf_opt.zero_grad()
        out.loss.backward()
        hf_opt.step()

    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, args.dtype)).to(
            args.device
        ),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.n_slots),
    )
    plain = batch.tokens[:, args.n_slots :]  # same total length once PEFT prepends its tokens
    peft_labels = labels[:, args.n_slots :]
    peft_mask = batch.attention_mask[:, args.n_slots :]
    peft_opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-3)

    def peft_step() -> None:
        out = peft_model(input_ids=plain, attention_mask=peft_mask, labels=peft_labels)
        peft_opt.zero_grad()
        out.loss.backward()
        peft_opt.step()

    methods = {
        "hf_inputs_embeds": hf_step,
        "hf_peft": peft_step,
        **{name: (lambda m=m, fn=fn: sklens_step(m, fn)) for name, m, fn in sklens_variants},
    }
    with linear_layout(laid_out):  # as train_soft_prompt holds it for the whole training
        timing = interleaved(methods, args.repeats, args.device)
    times, cpu = timing.wall, timing.cpu
    rows = [
        [
            name,
            f"{statistics.median(t) * 1000:.0f}",
            ratios(t, times["hf_inputs_embeds"]),
            ratios(t, times["hf_peft"]),
            ratios(cpu[name], cpu["hf_peft"]),
            f"{args.batch_size / statistics.median(t):.1f}",
            f"{n_tokens_total / statistics.median(t):.0f}",
        ]
        for name, t in times.items()
    ]
    write_results(
        "train_step",
        [
            "method",
            "median ms/step",
            "× plain HF, median (range) of rounds",
            "× PEFT, median (range) of rounds",
            "× PEFT in CPU time",
            "examples/s",
            "tokens/s",
        ],
        rows,
        args.device,
        args.results,
    )


if __name__ == "__main__":
    main()
