"""Installs dreamix_jax: `pip install -e .[test]` for development."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="dreamix_jax",
    version="0.1.0",
    description=("Dreamix (video diffusion models are general video editors) "
                 "in JAX/Flax on an Imagen-Video-style cascade."),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["dreamix_jax", "dreamix_jax.*"]),
    install_requires=_requirements(),
    extras_require={
        # nbclient/nbformat/ipykernel: tests/test_launch.py executes the Colab notebook headlessly.
        # pytest-xdist: the suite runs in one worker process per core (pytest.ini).
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0", "nbclient==0.11.0",
                 "nbformat==5.11.1", "ipykernel==7.4.0", "hypothesis==6.170.15",
                 # tests/test_unet3d.py, test_sd_vae.py, test_diffusers_import.py: PyTorch
                 # references for the ModelScope / Zeroscope import (never imported at runtime).
                 "diffusers==0.42.1"],
    },
)
