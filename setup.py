"""sago_kernels: fused Triton kernels for retention-prioritised gradient synthesis in unlearning.

``pip install .`` also builds the native CPU backend (``CMakeLists.txt``) when CMake and a C++17
compiler are present. Without them, or if that build fails, the package installs all the same
and CPU combines use the reference backend: the build prints one line saying so, and
``sago_kernels.backends()`` does not list ``"native"``. ``SAGO_CMAKE`` names the cmake to run;
``SAGO_NATIVE_BUILD=0`` skips the build.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """A library built by CMake, not by setuptools' compiler (no sources listed here)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self) -> None:
        for ext in self.extensions:
            self.build_native(ext)

    def build_native(self, ext: Extension) -> None:
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        if os.environ.get("SAGO_NATIVE_BUILD", "1") == "0":
            return self.notice("skipped (SAGO_NATIVE_BUILD=0)")
        cmake = shutil.which(os.environ.get("SAGO_CMAKE", "cmake"))
        if cmake is None:
            return self.notice("CMake was not found")
        with tempfile.TemporaryDirectory(prefix="sago-native-") as build_dir:
            configure = [
                cmake, "-S", str(ROOT), "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                f"-DSAGO_NATIVE_OUTPUT_DIR={target.parent}",
                f"-DSAGO_NATIVE_OUTPUT_NAME={target.name}",
            ]  # fmt: skip
            jobs = str(os.cpu_count() or 1)
            for command in (configure, [cmake, "--build", build_dir, "--parallel", jobs]):
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
                    return self.notice(f"`{' '.join(command[:2])} ...` failed")
        print(f"sago_kernels: built the native CPU backend: {target}")

    @staticmethod
    def notice(why: str) -> None:
        print(
            f"sago_kernels: native CPU backend not built ({why}); "
            "CPU combines will use the reference backend.",
            file=sys.stderr,
        )


setup(
    name="sago_kernels",
    version="0.1.0",
    description="Fused, in-place, sync-free gradient synthesis (SAGO, PCGrad) for LLM unlearning",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sago_kernels", "sago_kernels.*"]),
    package_data={"sago_kernels": ["csrc/*.h", "csrc/*.cpp"]},
    ext_modules=[CMakeExtension("sago_kernels._sago_native")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    # torch is not pinned: CUDA users keep their build; CI installs the CPU wheel first.
    install_requires=["torch>=2.4"],  # torch.library.custom_op (ops.py)
    extras_require={
        "triton": ["triton>=3.0"],
        # GradientSynthesizer on a DeepSpeed ZeRO 1/2/3 engine, and UnlearningTrainer under
        # DeepSpeed (sago_kernels/synthesis/deepspeed.py: written from and tested with 0.19.8)
        "deepspeed": ["deepspeed>=0.19.8"],
        # the unlearning demo, the Trainer integration and the recipes
        "demo": [
            "transformers>=4.46",
            "accelerate>=1.0",
            "matplotlib",
            "tqdm",
            # the TOFU-style author corpus (sago_kernels/unlearning/corpus.py)
            "faker>=40",
            # the unlearning metrics (sago_kernels/unlearning/metrics.py)
            "rouge-score",
            "scipy",
            "scikit-learn",
            # LoRA adapters (python/lora_run.py)
            "peft>=0.21",
            # TOFU and WMDP files, hub or folder, and tokenizers built from a corpus
            # (sago_kernels/unlearning/tofu.py, wmdp.py, checkpoints.py)
            "datasets>=3.0",
            "tokenizers>=0.20",
        ],
        "test": [
            "triton>=3.0",
            "pytest>=7",
            "hypothesis==6.170.17",
            "pytest-benchmark>=4",
            "numpy",
            "transformers>=4.46",
            "accelerate>=1.0",
            "matplotlib",
            "tqdm",
            "faker>=40",
            "rouge-score",
            "scipy",
            "scikit-learn",
            # the oracle of the Gramian weightings (tests/test_weightings.py), with the solvers
            # its UPGrad/DualProj, CAGrad and Nash-MTL need
            "torchjd[quadprog-projector,cagrad,nash-mtl]==0.18.0",
            "ecos>=2.0.14",
            # LoRA adapters with the synthesizer and the Trainer (tests/test_lora.py)
            "peft>=0.21",
            # real data and checkpoints built locally (tests/test_real_data.py)
            "datasets>=3.0",
            "tokenizers>=0.20",
            # DeepSpeed ZeRO 1/2/3 (tests/test_deepspeed.py, the DeepSpeed recipe's test)
            "deepspeed>=0.19.8",
        ],
    },
)
