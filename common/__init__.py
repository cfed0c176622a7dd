"""What both sides need: slide reading and tiling, the model factory, metrics, config loading."""
