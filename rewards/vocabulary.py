"""Object vocabularies by name: which words mention which object category.

Shared by the grounding and claims judges and by hallucination tracking during training (align/dpo.py),
so that a vocabulary named in any of them means the same words.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_vocabulary(spec: dict[str, list[str]] | str) -> dict[str, list[str]]:
    """'toy' -> the toy world's objects; a path -> a JSON object {category: [words]}; a dict as is."""
    if isinstance(spec, dict):
        return spec
    if spec == "toy":
        from halign.data_gen.toy_world import ToyWorldConfig

        return ToyWorldConfig().vocabulary()
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"object vocabulary must be 'toy' or a JSON file, got {spec!r}")
    try:
        vocab = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"object vocabulary: {path} is not valid JSON ({err.msg})") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, list) for v in vocab.values()):
        raise ValueError(f"object vocabulary: {path} must hold an object {{category: [words]}}")
    return vocab
