"""Is a saved USAE whole? Checked without torch, so the workflow's driver can ask before any job.

A saved model is ``model.safetensors`` + ``config.json`` (:mod:`usae.sae.io`); the config
records the weights' SHA-256 at save time.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from usae.fingerprint import file_sha256

FORMAT = "usae-model/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def model_problem(directory: str | Path, *, full: bool = True) -> str | None:
    """What is wrong with a saved model's files, or None when they are whole.

    Checks, cheapest first: both files exist, ``config.json`` parses and has this format,
    the weights file is as long as its safetensors header says (a truncated copy or an
    interrupted write is not), and with ``full`` its SHA-256 equals the one recorded at
    save time (any changed byte).
    """
    directory = Path(directory)
    missing = [str(directory / f) for f in (WEIGHTS, CONFIG) if not (directory / f).exists()]
    if missing:
        return f"not a saved USAE, missing: {', '.join(missing)}"
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return f"{directory / CONFIG} is not valid JSON ({err})"
    if config.get("format") != FORMAT:
        return f"{directory}: format {config.get('format')!r}, expected {FORMAT!r}"
    weights = directory / WEIGHTS
    length_problem = _safetensors_length_problem(weights)
    if length_problem:
        return f"{weights} is damaged: {length_problem}"
    expected = config.get("weights_sha256")
    if full and expected and file_sha256(weights) != expected:
        return f"{weights} is damaged: its SHA-256 differs from the one recorded when it was saved"
    return None


def _safetensors_length_problem(path: Path) -> str | None:
    """A safetensors file is 8 bytes of header length, a JSON header, then the tensors' bytes."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, too short to be a safetensors file"
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            return f"{size:,} bytes, cut short inside its header"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return "its header is not valid JSON"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + header_len + end:
        return f"{size:,} bytes where its header says {8 + header_len + end:,} (truncated or appended to)"
    return None


def damaged_models(directories: list[str | Path]) -> list[str]:
    """One line per saved model in ``directories`` that exists but is damaged (absent ones are
    work still to do, not damage)."""
    found = []
    for directory in map(Path, directories):
        if directory.exists() and (problem := model_problem(directory)):
            found.append(f"{problem}: delete {directory} and rerun, which retrains it (its evaluation and "
                         "report, made from the model before the damage, are kept until then)")
    return found
