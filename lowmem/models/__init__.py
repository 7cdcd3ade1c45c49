"""The released SpatialEdit model, faithful to the official code: the DiT and its blocks, the Qwen3-VL
conditioner and its prompt, the Wan2.1 VAE, the flow-matching scheduler and the guidance rule, the
model folder's layout, reading weights tensor by tensor, and importing the official release."""
