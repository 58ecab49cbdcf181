"""Install vivat_kernels and vivat. Nothing is compiled here: the C++ extension in csrc/ is built
just in time on first use (or with ``python -m vivat_kernels build``); its sources are copied into
the package so an installed (non-editable) copy can build it too."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithSources(build_py):
    """Copy csrc/*.cpp, *.h into vivat_kernels/_csrc inside the build tree."""

    def run(self):
        super().run()
        dest = Path(self.build_lib) / "vivat_kernels" / "_csrc"
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted((HERE / "csrc").glob("*")):
            if src.suffix in (".cpp", ".h"):
                shutil.copy2(src, dest / src.name)


setup(
    name="vivat",
    version="0.1.0",
    description="Artifact-free, fast KL-VAE training: fused GroupNorm / SCN / reflect-conv kernels and the VIVAT VAE",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vivat_kernels", "vivat_kernels.*", "vivat", "vivat.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.11",
        "triton>=3.6; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "ninja",
        "pybind11",
        "numpy",
        "safetensors",
        "tqdm",
        "pillow",
        "scikit-image",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "torchmetrics", "diffusers", "lpips", "ruff"],
        "bench": ["pytest-benchmark", "matplotlib"],
        "eval": ["lpips", "torchmetrics"],
        "interop": ["diffusers", "safetensors"],
        "all": ["pytest", "hypothesis", "pytest-benchmark", "matplotlib", "lpips", "torchmetrics", "diffusers", "ruff"],
    },
    entry_points={"console_scripts": ["vivat=vivat.cli:main"]},
    cmdclass={"build_py": BuildPyWithSources},
)
