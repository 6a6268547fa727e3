"""Probes of the diffusion family: generation quality (class accuracy, Fréchet distance, speed) and membership
inference against the images a diffusion model was trained on."""
