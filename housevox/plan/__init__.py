"""Run planning: what a run will cost and what is wrong with it, before any GPU time is spent.

It sits above `train/` (the memory prediction traces the production module) and below the
CLIs: `python -m housevox.lora lint` and the lint at the start of every fit both read it.
"""
