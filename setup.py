"""sago_kernels: fused Triton kernels for retention-prioritised gradient synthesis in unlearning."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="sago_kernels",
    version="0.1.0",
    description="Fused, in-place, sync-free gradient synthesis (SAGO, PCGrad) for LLM unlearning",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sago_kernels", "sago_kernels.*"]),
    python_requires=">=3.10",
    # torch is not pinned: CUDA users keep their build; CI installs the CPU wheel first.
    install_requires=["torch>=2.1"],
    extras_require={
        "triton": ["triton>=3.0"],
        # the unlearning demo, the Trainer integration and the recipes
        "demo": ["transformers>=4.46", "accelerate>=1.0", "matplotlib"],
        "test": [
            "triton>=3.0",
            "pytest>=7",
            "hypothesis==6.170.17",
            "pytest-benchmark>=4",
            "numpy",
            "transformers>=4.46",
            "accelerate>=1.0",
            "matplotlib",
        ],
    },
)
