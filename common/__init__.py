"""What both sides need: slides and tiling, the model and its wire format and signatures,
uncertainty, selection, training and its losses, the central bank, metrics, typed configs."""
