"""The Hugging Face hub: ``USAE.from_pretrained``, ``save_pretrained`` and ``push_to_hub`` through
huggingface_hub's ModelHubMixin, in the saved-model format of :mod:`usae.sae.io` plus a model card.

A hub repo (or a ``save_pretrained`` folder) is a run's ``model/`` folder, ``model.safetensors``
and ``config.json``, with ``README.md``, the card of :mod:`usae.sae.card`, beside them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelHubMixin, snapshot_download
from huggingface_hub import constants
from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError

from usae.sae.card import CARD_TEMPLATE, PAPER, card_context, read_evaluation
from usae.sae.integrity import CONFIG, WEIGHTS

logger = logging.getLogger(__name__)

CARD = "README.md"
TAGS = ["usae", "sparse-autoencoder", "universal-sparse-autoencoder", "interpretability", "vision"]


class HubMixin(ModelHubMixin, library_name="usae", paper_url=PAPER, tags=TAGS, model_card_template=CARD_TEMPLATE):
    """huggingface_hub's ModelHubMixin for :class:`usae.USAE` (which defines ``save``, ``load``, ``saved_config``)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> Any:
        """A model from a local folder (``model.safetensors`` + ``config.json``) or a hub repo id.

        A repo id is read from the local cache when it holds it (``HF_HOME``; with ``HF_HUB_OFFLINE=1``
        only from there), else downloaded. Keyword arguments are huggingface_hub's (``revision``,
        ``cache_dir``, ``local_files_only``, ``token``, ``force_download``) and ``device``.

        Raises:
            FileNotFoundError: not a folder, and not a valid repo id either, or a repo id that is
                not in the cache when downloads are off.
        """
        name = pretrained_model_name_or_path
        try:
            return super().from_pretrained(name, **kwargs)
        except HFValidationError as err:
            raise FileNotFoundError(f"{name}: no such model folder, and not a hub repo id ('name' or "
                                    f"'namespace/name'): {err}") from None
        except LocalEntryNotFoundError as err:
            cache = kwargs.get("cache_dir") or constants.HF_HUB_CACHE
            raise FileNotFoundError(f"{name}: no such model folder, and hub repo {name!r} is not in the cache "
                                    f"{cache} (downloads are off: HF_HUB_OFFLINE or local_files_only): {err}") from None

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         device: str | torch.device = "cpu", **config_fields: Any) -> Any:
        # ``config_fields`` are config.json's fields that share a name with __init__'s arguments
        # (``dims``), passed by the mixin; ``load`` reads them again with everything else.
        folder = Path(model_id)
        if not folder.is_dir():
            folder = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, local_files_only=local_files_only,
                                            token=token, allow_patterns=[WEIGHTS, CONFIG, CARD]))
        return cls.load(folder, device=device)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> str | None:
        """Write ``model.safetensors``, ``config.json`` and the card ``README.md`` to ``save_directory``,
        replacing it as :meth:`save` does (huggingface_hub's ``save_pretrained``; ``push_to_hub=True`` pushes).

        Raises:
            ValueError: the folder holds anything else (such as a whole run), which replacing it would delete.
        """
        # Checked before the mixin starts (it deletes config.json first).
        folder = Path(save_directory)
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        foreign = sorted(n for n in names if n not in (WEIGHTS, CONFIG, CARD) and not n.startswith("."))
        if foreign:
            raise ValueError(f"save_pretrained({folder}) replaces that folder, which holds other files {foreign}; "
                             "save to an empty or new folder")
        return super().save_pretrained(folder, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        self.save(save_directory)  # the whole folder, so no card of an earlier model survives

    def generate_model_card(self, *args: Any, evaluation: dict[str, Any] | None = None, repo_id: str | None = None,
                            **kwargs: Any) -> ModelCard:
        """The card of :mod:`usae.sae.card`: models, layers, standardisation, settings, seed, versions,
        ``evaluation`` (:func:`usae.sae.card.read_evaluation`) when given, and how to load it from ``repo_id``."""
        return super().generate_model_card(**card_context(self.saved_config(), evaluation, repo_id))

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Upload the model folder and its card to ``repo_id`` (huggingface_hub's ``push_to_hub``, so
        ``private``, ``token``, ``branch``, ``create_pr``, ``commit_message``); returns the commit URL."""
        return super().push_to_hub(repo_id, model_card_kwargs={"repo_id": repo_id, **(model_card_kwargs or {})},
                                   **kwargs)


def push_run(run_dir: str | Path, repo_id: str, *, private: bool | None = None, out: str | Path | None = None,
             token: str | None = None) -> str:
    """Push a run's trained model (``run_dir/model``) with a card that includes its evaluation
    (``run_dir/eval``, when present), or with ``out`` write that folder there instead.

    Returns:
        The commit URL, or with ``out`` the folder written.

    Raises:
        FileNotFoundError: the run has no trained model. ValueError: the model is damaged.
    """
    from usae.sae.model import USAE  # the model module imports this one

    run_dir = Path(run_dir)
    model = USAE.load(run_dir / "model")  # checks the weights' hash: a damaged model is never published
    card = {"evaluation": read_evaluation(run_dir / "eval"), "repo_id": repo_id}
    if card["evaluation"] is None:
        logger.warning("%s has no evaluation (eval/metrics.json): the card will have no metrics", run_dir)
    if out is not None:
        model.save_pretrained(out, model_card_kwargs=card)
        return str(out)
    url = model.push_to_hub(repo_id, private=private, token=token, model_card_kwargs=card)
    logger.info("pushed %s to %s: %s", run_dir, repo_id, url)
    return str(url)
