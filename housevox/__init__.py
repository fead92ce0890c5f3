"""housevox: LoRA training for ACE-Step v1.5 music models, on PyTorch Lightning."""

__version__ = "0.1.0"
