"""Universal Sparse Autoencoders: concepts shared by several vision models (arXiv 2502.03714).

Importing ``usae`` is cheap (no torch); stages live in their own modules.
"""

__version__ = "0.1.0"

# Bumped when a stage's output changes meaning or format. The workflow passes these as
# params, so upgrading usae reruns exactly the stages whose code changed.
STAGE_VERSIONS = {"manifest": 3, "extract": 4, "prepare": 3, "train": 5, "evaluate": 10, "report": 10, "maco": 2}


def __getattr__(name: str):
    # ``usae.USAE`` without importing torch on ``import usae`` (the Snakefile imports usae).
    if name == "USAE":
        from usae.sae.model import USAE

        return USAE
    raise AttributeError(f"module 'usae' has no attribute {name!r}")
