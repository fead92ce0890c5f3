"""Can this environment train on an NVIDIA GPU, and if not, why and how to fix it.

PyPI's torch is a CUDA 13 build on Linux (NVIDIA driver >= 580) and CPU-only on Windows, so
a producer on a rented 535-570 host or on Windows gets a torch that cannot see the card, and
Lightning's `accelerator: auto` would then train XL in fp32 on the CPU without a word. The
probe reads what torch, the driver library and nvidia-smi say; `cuda_problem` turns that into
one line with the reason and the fix (`housevox.doctor` prints the whole report).
"""

import ctypes
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import torch

# The oldest driver each CUDA major runs on (NVIDIA's CUDA Toolkit release notes, minor-version compatibility).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
# PyTorch's own wheel index: a CUDA 12.6 build runs on drivers from 525 (Linux) / 528 (Windows).
OLD_DRIVER_WHEELS = "https://download.pytorch.org/whl/cu126"
NEW_DRIVER_WHEELS = "https://download.pytorch.org/whl/cu130"


@dataclass(frozen=True)
class CudaEnv:
    """What torch and the NVIDIA driver report on this machine."""

    torch_version: str
    build_cuda: str | None  # torch.version.cuda: None for a CPU-only build
    available: bool
    driver_cuda: int | None = None  # the CUDA version the driver supports, e.g. 12080 (cuDriverGetVersion)
    driver_version: str | None = None  # e.g. "550.54.15" (nvidia-smi)
    gpus: tuple[str, ...] = field(default_factory=tuple)  # names nvidia-smi lists
    system: str = platform.system()

    @property
    def base_version(self) -> str:
        return self.torch_version.split("+")[0]


def _driver_cuda_version() -> int | None:
    """cuDriverGetVersion from the driver library itself (works when torch's CUDA runtime refuses the driver)."""
    for name in ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
            return version.value
    return None


def _nvidia_smi() -> tuple[str | None, tuple[str, ...]]:
    """(driver version, GPU names) from nvidia-smi, or (None, ()) when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, ()
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version,name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, ()
    rows = [[part.strip() for part in line.split(",", 1)] for line in out.splitlines() if "," in line]
    return (rows[0][0] if rows else None), tuple(name for _, name in rows)


def probe() -> CudaEnv:
    driver_version, gpus = _nvidia_smi()
    return CudaEnv(torch_version=torch.__version__, build_cuda=torch.version.cuda, available=torch.cuda.is_available(),
                   driver_cuda=_driver_cuda_version(), driver_version=driver_version, gpus=gpus)


def _cuda_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def _install_hint(wheels: str, env: CudaEnv) -> str:
    return (f"install a CUDA build of the same torch into this environment: "
            f".tools/bin/uv pip install --python .venv/bin/python --reinstall torch=={env.base_version} torchaudio=={env.base_version} "
            f"--index-url {wheels} (README: Installing a CUDA torch)")


def cuda_problem(env: CudaEnv) -> str | None:
    """Why CUDA is unusable here and how to fix it, in one line; None when a GPU is usable."""
    if env.available:
        return None
    if env.build_cuda is None:
        where = "PyPI's torch is CPU-only on Windows" if env.system == "Windows" else "this torch was built without CUDA"
        return f"torch {env.torch_version} is a CPU-only build ({where}); " + _install_hint(
            NEW_DRIVER_WHEELS if env.driver_cuda and env.driver_cuda >= 13000 else OLD_DRIVER_WHEELS, env)
    major = int(env.build_cuda.split(".")[0])
    needed = MIN_DRIVER.get(major)
    if env.driver_cuda is not None and env.driver_cuda < major * 1000:
        driver = f"driver {env.driver_version or '?'} supports CUDA {_cuda_text(env.driver_cuda)}"
        return (f"torch {env.torch_version} needs CUDA {env.build_cuda} (NVIDIA driver >= {needed or '?'}), but this "
                f"{driver}; update the driver, or " + _install_hint(OLD_DRIVER_WHEELS, env))
    if env.driver_cuda is None and not env.gpus:
        return (f"torch {env.torch_version} is a CUDA {env.build_cuda} build but no NVIDIA driver or GPU was found "
                "(nvidia-smi lists none); install the NVIDIA driver, check the card is visible (CUDA_VISIBLE_DEVICES, "
                "container --gpus), or set trainer.accelerator: cpu for a model small enough for the CPU")
    return (f"torch {env.torch_version} (CUDA {env.build_cuda}) cannot use the GPU although a driver "
            f"{env.driver_version or ''} is present; check CUDA_VISIBLE_DEVICES and run python -m housevox.doctor")


def needs_gpu(accelerator: str | None, size_name: str) -> bool:
    """A run that would be hopeless on the CPU: the XL/2B DiT, or a GPU asked for by name."""
    return str(accelerator or "auto").lower() in ("gpu", "cuda") or size_name in ("xl", "2b")


def check_can_train(accelerator: str | None, size_name: str, env: CudaEnv | None = None) -> str | None:
    """The one-line refusal for a run that needs a GPU when CUDA is unusable; None when the run may go on.

    `accelerator: cpu` is the user's explicit choice and is honoured for any model.
    """
    if str(accelerator or "auto").lower() == "cpu" or not needs_gpu(accelerator, size_name):
        return None
    env = env or probe()
    problem = cuda_problem(env)
    if problem is None:
        return None
    what = f"the {size_name.upper()} DiT" if size_name in ("xl", "2b") else f"trainer.accelerator {accelerator}"
    return f"{what} needs an NVIDIA GPU and CUDA is unusable: {problem}"
