"""Pure audio functions for preprocessing: load, resample, zero crossings, loudness, slicing, writing.

Nothing here knows about models; every function takes and returns numpy arrays shaped
[channels, samples] so the pieces can be tested on generated signals with known answers.
"""
