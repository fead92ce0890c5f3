"""`sample_latents` against upstream ACE-Step's own sampler output on the upstream-written tiny checkpoint."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from housevox.acestep import initial_noise, load_dit, sample_latents
from housevox.acestep.conditioning import pad_rows
from housevox.acestep.sampler import dcw_correction, haar_dwt, haar_idwt

CASES = ["euler_nocfg", "apg", "nocfg_dcw", "apg_dcw", "apg_dcw_auto2"]


@pytest.fixture(scope="module")
def reference(upstream_tiny):
    path = upstream_tiny / "sampler_reference.safetensors"
    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
    return load_file(path), {case: entry["settings"] for case, entry in json.loads(meta["case_settings"]).items()}, \
        float(meta["tolerance"])


@pytest.fixture(scope="module")
def dit(upstream_tiny):
    return load_dit(upstream_tiny, dtype=torch.float32)


class CountingDiT:
    """Wraps a DiT (or a replay of recorded outputs) and records each call's batch and conditions."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, r, encoder_hidden_states, context):
        self.calls.append({"x": x.clone(), "t": t.clone(), "r": r.clone(), "cond": encoder_hidden_states})
        return self.fn(x, t, r, encoder_hidden_states, context)


def run_case(dit, tensors, settings, case, **overrides):
    kwargs = dict(steps=settings["infer_steps"], shift=settings["shift"],
                  guidance_scale=settings["diffusion_guidance_scale"], guidance="apg",
                  dcw=settings["dcw_enabled"])
    if settings["dcw_enabled"]:
        assert (settings["dcw_mode"], settings["dcw_wavelet"]) == ("double", "haar")
        kwargs.update(dcw_scaler=settings["dcw_scaler"], dcw_high_scaler=settings["dcw_high_scaler"])
    kwargs.update(overrides)
    return sample_latents(dit, tensors["inputs.noise"], tensors["cond.encoder_hidden_states"],
                          tensors["null.encoder_hidden_states"], tensors[f"{case}.context_latents"], **kwargs)


@pytest.mark.parametrize("case", CASES)
def test_matches_upstream_final_latents(reference, dit, case):
    tensors, settings, tolerance = reference
    s = settings[case]
    assert (s["sampler_mode"], s["cfg_interval_start"], s["cfg_interval_end"], s["use_adg"]) == ("euler", 0.0, 1.0, False)
    final = run_case(dit, tensors, s, case)
    error = (final - tensors[f"{case}.final_latents"]).abs().max().item()
    assert error <= tolerance, f"{case}: max abs {error:.3g}"
    if case == "euler_nocfg":
        # No guidance, no DCW, exact dt = 1/8: what is left is the DiT's own distance from upstream's
        # (diffusers' network, ~1e-5 on reference.safetensors) times dt, never the sampler's.
        assert error <= 1e-5, error


def test_guidance_math_on_upstreams_own_dit_outputs(reference):
    """Replaying upstream's raw v_cond / v_null removes the DiT: each step's latent then matches to fp32 rounding."""
    tensors, settings, _ = reference
    replay = iter(torch.cat([tensors["apg.step_v_cond"][k:k + 1], tensors["apg.step_v_null"][k:k + 1]])
                  for k in range(settings["apg"]["infer_steps"]))
    dit = CountingDiT(lambda *_: next(replay))
    final = run_case(dit, tensors, settings["apg"], "apg")
    steps = tensors["apg.step_latents"]
    for k, call in enumerate(dit.calls):
        assert torch.equal(call["t"], tensors["apg.timesteps"][k].expand(2)) and torch.equal(call["r"], call["t"])
        assert (call["x"][0] - steps[k]).abs().max() <= 1e-6 and torch.equal(call["x"][0], call["x"][1])
    assert (final[0] - steps[-1]).abs().max() <= 1e-6


def test_initial_noise_is_upstreams(reference):
    tensors, _, _ = reference
    noise = initial_noise([1234], 50, "cpu", torch.float32)
    assert torch.equal(noise, tensors["inputs.noise"])
    pair = initial_noise([1234, 7], 50, "cpu", torch.float32)  # one generator per seed, as upstream for a list
    assert torch.equal(pair[0:1], noise) and torch.equal(pair[1:2], initial_noise([7], 50, "cpu", torch.float32))


@pytest.mark.parametrize("scale, guidance, batch", [(1.0, "apg", 1), (0.5, "cfg", 1), (7.0, "apg", 2), (3.0, "cfg", 2)])
def test_one_dit_call_per_step(reference, dit, scale, guidance, batch):
    tensors, settings, _ = reference
    counted = CountingDiT(dit)
    run_case(counted, tensors, settings["apg"], "apg", steps=3, guidance_scale=scale, guidance=guidance)
    assert len(counted.calls) == 3
    cond, null = tensors["cond.encoder_hidden_states"], tensors["null.encoder_hidden_states"]
    for call in counted.calls:
        assert call["x"].shape[0] == batch
        assert torch.equal(call["cond"], cond if batch == 1 else torch.cat([cond, null]))


def test_apg_momentum_lives_in_one_call(reference, dit):
    tensors, settings, _ = reference
    alone = run_case(dit, tensors, settings["apg"], "apg")
    again = run_case(dit, tensors, settings["apg"], "apg")
    assert torch.equal(alone, again)
    cfg = run_case(dit, tensors, settings["apg"], "apg", guidance="cfg")
    assert (cfg - alone).abs().max() > 1.0  # plain CFG is a different take (8 apart on this checkpoint upstream)


def test_haar_dcw_on_odd_lengths():
    x = torch.randn(2, 37, 64, generator=torch.Generator().manual_seed(0))
    low, high = haar_dwt(x)
    assert low.shape == high.shape == (2, 19, 64)
    assert torch.allclose(low[:, -1], x[:, -1] * 0.5 ** 0.5) and torch.allclose(high[:, -1], x[:, -1] * 0.5 ** 0.5)
    assert torch.allclose(haar_idwt(low, high, 37), x, atol=1e-6)
    x0 = torch.randn(2, 37, 64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(dcw_correction(x, x0, 1.0, 0.0, 0.5), x, atol=1e-6)  # both bands weighted 0 at t = 1
    moved = dcw_correction(x, x0, 0.5, 0.05, 0.02)
    pair_mean = lambda y: y[:, :36].unflatten(1, (18, 2)).mean(2)  # noqa: E731
    assert torch.allclose(pair_mean(moved), pair_mean(x) + 0.025 * pair_mean(x - x0), atol=1e-6)


def test_rejects_unknown_guidance(reference, dit):
    tensors, settings, _ = reference
    with pytest.raises(ValueError, match="guidance 'pag'"):
        run_case(dit, tensors, settings["apg"], "apg", guidance="pag")


def test_bf16_take_stays_in_bf16_with_upstreams_schedule(reference):
    """On GPU upstream samples in bf16: noise drawn in bf16, schedule computed in bf16 (not fp32 cast down)."""
    tensors, _, _ = reference
    noise = initial_noise([1234], 50, "cpu", torch.bfloat16)
    assert noise.dtype == torch.bfloat16
    assert torch.equal(noise, torch.randn(1, 50, 64, generator=torch.Generator("cpu").manual_seed(1234),
                                          dtype=torch.bfloat16))
    dit = CountingDiT(lambda x, *_: torch.ones_like(x) * 0.1)
    final = sample_latents(dit, noise, tensors["cond.encoder_hidden_states"], tensors["null.encoder_hidden_states"],
                           tensors["apg_dcw.context_latents"], 50, shift=3.0, guidance_scale=7.0)
    upstream = torch.linspace(1.0, 0.0, 51, dtype=torch.bfloat16)
    upstream = 3.0 * upstream / (1 + (3.0 - 1) * upstream)
    assert torch.equal(torch.stack([call["t"][0] for call in dit.calls]), upstream[:-1])
    fp32_cast = torch.linspace(1.0, 0.0, 51)
    assert not torch.equal(upstream, (3.0 * fp32_cast / (1 + 2.0 * fp32_cast)).to(torch.bfloat16))  # it matters
    assert final.dtype == torch.bfloat16 and all(call["x"].dtype == torch.bfloat16 for call in dit.calls)


@pytest.mark.parametrize("guidance, scale, dcw", [("apg", 7.0, True), ("cfg", 3.0, False), ("apg", 1.0, True)])
def test_takes_rendered_in_one_padded_batch_equal_each_take_alone(dit, guidance, scale, dcw):
    """3 takes with conditions of different lengths in one batch (padded, masked): each row = that take alone."""
    cfg = dit.config
    gen = torch.Generator().manual_seed(3)
    lengths, frames = (6, 15, 10), 24
    conds = [torch.randn(n, cfg.encoder_hidden_size, generator=gen) for n in lengths]
    nulls = [torch.randn(1, cfg.encoder_hidden_size, generator=gen).expand(n, -1) for n in lengths]
    context = torch.randn(1, frames, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=gen)
    noise = initial_noise([5, 6, 7], frames, "cpu", torch.float32, cfg.audio_acoustic_hidden_dim)
    kwargs = dict(steps=4, shift=3.0, guidance_scale=scale, guidance=guidance, dcw=dcw)
    mask = torch.stack([torch.arange(max(lengths)) < n for n in lengths])
    together = sample_latents(dit, noise, pad_rows(conds), pad_rows(nulls), context.expand(3, -1, -1),
                              encoder_attention_mask=mask, **kwargs)
    for i in range(3):
        alone = sample_latents(dit, noise[i:i + 1], conds[i][None], nulls[i][None], context, **kwargs)
        assert (together[i] - alone[0]).abs().max().item() <= 1e-5, i


def test_renderer_batches_takes_and_each_clip_equals_its_take_alone(tiny_checkpoint):
    """Renderer.render_batch: takes of different captions/lyrics share a batch; a take with other steps gets its own."""
    from housevox.generate import Renderer, Take

    dit = load_dit(tiny_checkpoint, dtype=torch.float32)
    renderer = Renderer.from_checkpoint(tiny_checkpoint, torch.device("cpu"))
    takes = [Take(caption="deep house, warm pads", duration_s=2.0, steps=3, seed=1),
             Take(caption="garage", duration_s=2.0, steps=2, seed=3),
             Take(caption="acid house", lyrics="[verse]\nup all night, under the light", duration_s=2.0, steps=3, seed=2)]
    calls = []
    hook = dit.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    batched = renderer.render_batch(dit, takes)
    hook.remove()
    assert calls == [4] * 3 + [2] * 2, "takes 1 and 3 (×2 for CFG) in one batch, then take 2 alone"
    for take, clip in zip(takes, batched):
        alone = renderer.render(dit, take)
        assert clip.shape == alone.shape and (clip - alone).abs().max().item() <= 1e-4
