"""What a unit is: a site of the model (MLP neurons, attention heads, residual dimensions or
directions, any hook, SAE latents; ``sites``) and a set of units at their slots (``NeuronSet``,
``neuron_set``), the one parser of "which units" that every stage takes."""
