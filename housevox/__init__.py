"""housevox: LoRA training for ACE-Step v1.5 music models, on PyTorch Lightning."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on every CPU import that an optional kernel hub package is
# absent; housevox never uses 4-bit CPU kernels, so that line is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
