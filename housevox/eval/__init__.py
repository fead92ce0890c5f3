"""Objective scores of a LoRA's epochs: FAD of renders to the training and held-out segments, and CLAP prompt adherence."""
