"""Model execution: forward-batch tensors, the model runner, the sampler."""
