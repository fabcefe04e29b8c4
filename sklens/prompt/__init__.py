"""Stage 1, the prompt: a soft prompt of trainable slots (``soft_prompt``), the one batched pass
that writes it into the model's input (``forward``), and its training on the frozen model
(``training``)."""
