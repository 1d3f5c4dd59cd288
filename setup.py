from setuptools import find_packages, setup

setup(
    name="lt-harness",
    version="0.1.0",
    description="Long-tailed image classification studies at cluster scale",
    packages=find_packages(include=["harness", "harness.*"]),
    python_requires=">=3.10",
    install_requires=[
        # a matched pair: the registry's CUDA build runs on the CPU too
        "torch==2.14.1",
        "torchvision==0.29.2",
        "pyyaml>=6",
        "ffcv==1.0.2",
        "numba",
        "submitit==1.5.4",
        "tensorboard>=2.15",
        "matplotlib>=3.7",
        "pillow>=10",
        "tqdm",
    ],
    entry_points={"console_scripts": [
        "lt-sweep=harness.cli.sweep:main",
        "lt-report=harness.cli.report:main",
        "lt-prepare-data=harness.cli.prepare_data:main",
        "lt-generate-tail=harness.cli.generate_tail:main",
    ]},
    extras_require={
        "deepspeed": ["deepspeed==0.19.8"],
        "generate": ["diffusers==0.42.1", "transformers"],
        "dev": ["pytest>=8", "pytest-timeout", "pytest-xdist", "ruff==0.14.*", "deepspeed==0.19.8", "diffusers==0.42.1",
                "transformers"],
    },
)
