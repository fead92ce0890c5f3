"""`python -m housevox.doctor` — the environment a producer (and an issue report) needs, in one screen.

torch's build and CUDA runtime, the NVIDIA driver, each GPU with its memory and bf16 support,
bitsandbytes' backend, the attention kernels, and whether uv.lock's torch suits this machine.
"""

import platform
import sys

import torch

from housevox.accelerator import MIN_DRIVER, CudaEnv, cuda_problem, probe
from housevox.errors import run_cli

LOCKED_TORCH = "2.11.0"  # uv.lock's torch; PyPI ships it as a CUDA 13.0 build on Linux x86-64, CPU-only elsewhere


def lock_verdict(env: CudaEnv, system: str, machine: str) -> str:
    """Does the torch uv.lock installs from PyPI run on this machine's GPU?"""
    if system == "Linux" and machine in ("x86_64", "AMD64", "aarch64"):
        if env.driver_cuda is None:
            return "uv.lock's torch (PyPI, CUDA 13.0) would run here on the CPU only: no NVIDIA driver found"
        if env.driver_cuda >= 13000:
            return "uv.lock's torch (PyPI, CUDA 13.0) suits this machine"
        return (f"uv.lock's torch (PyPI, CUDA 13.0) needs driver >= {MIN_DRIVER[13]}; this driver supports CUDA "
                f"{env.driver_cuda // 1000}.{env.driver_cuda % 1000 // 10}: install the cu126 build (README)")
    return f"uv.lock's torch from PyPI is CPU-only on {system}: install a CUDA build from PyTorch's index (README)"


def attention_lines() -> list[str]:
    """Which scaled-dot-product kernels this torch offers, and which the DiT's layer types can get."""
    if not torch.cuda.is_available():
        return ["attention: CPU (flash-attention-for-CPU kernel for unmasked layers, math for masked ones)"]
    cuda = torch.backends.cuda
    flash = cuda.is_flash_attention_available() and cuda.flash_sdp_enabled()
    efficient = cuda.mem_efficient_sdp_enabled()
    cudnn = cuda.cudnn_sdp_enabled()
    masked = "memory-efficient" if efficient else "cuDNN" if cudnn else "math"
    return [f"attention kernels: flash {'yes' if flash else 'no'}, memory-efficient {'yes' if efficient else 'no'}, "
            f"cuDNN {'yes' if cudnn else 'no'}",
            f"  full self-attention and cross-attention (no mask): {'flash' if flash else masked}; "
            f"sliding-window self-attention (additive mask, flash takes none): {masked}"]


def bitsandbytes_line() -> str:
    try:
        import bitsandbytes
        from bitsandbytes.cextension import BNB_BACKEND
    except Exception as exc:  # noqa: BLE001 - a broken install is itself the finding
        return f"bitsandbytes: not importable ({type(exc).__name__}: {exc})"
    return f"bitsandbytes {bitsandbytes.__version__}: {BNB_BACKEND} backend"


def report(env: CudaEnv | None = None) -> list[str]:
    env = env or probe()
    system, machine = platform.system(), platform.machine()
    lines = [f"python {platform.python_version()} on {system} {machine}",
             f"torch {env.torch_version}: " + (f"CUDA {env.build_cuda} build" if env.build_cuda else "CPU-only build"),
             f"NVIDIA driver: {env.driver_version or 'none found'}"
             + (f" (supports CUDA {env.driver_cuda // 1000}.{env.driver_cuda % 1000 // 10})" if env.driver_cuda else "")]
    if env.available:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            bf16 = "bf16 yes" if props.major >= 8 else "bf16 no (emulated: slow, use a card from Ampere on)"
            lines.append(f"GPU {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute {props.major}.{props.minor}, {bf16}")
    else:
        lines += [f"GPU (nvidia-smi): {name}" for name in env.gpus]
        lines.append("CUDA: unusable: " + (cuda_problem(env) or "?"))
    lines.append(bitsandbytes_line())
    lines += attention_lines()
    lines.append(lock_verdict(env, system, machine))
    return lines


def main(argv=None) -> int:
    print("\n".join(report()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
