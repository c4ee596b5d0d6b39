"""The reference log-prob cache of the fast DPO trainer (`align/fast_dpo.py`): its key, its description, its place.

A cached reference log-prob is only right if nothing it depends on has changed, so the key covers all of it:

- the reference weights as they sit in memory (trl's reference copy, an explicit `ref_model`, or the base with
  the trainable adapter off plus any reference adapter), and the reference adapter's settings;
- the model config (e.g. `vision_feature_layer`) and the attention implementation;
- the processor: image-processor settings (mean/std, sizes, `max_pixels`), tokenizer, chat template;
- max_length (truncation), the model dtype and the autocast setting (bf16/fp16);
- the mDPO crop settings (the corrupted images);
- every pair's texts and image bytes (pairs saved again with other pixels, or an image file the dataset
  refers to by path rewritten in place, change the key);
- the library versions whose numerics the log-probs go through, and this cache's format version.

Each part is stored, readable, in `ref_logps-<key>.json` beside `ref_logps-<key>.pt`; on a miss the parts that
differ from the newest earlier description in the folder are named. Big inputs enter as digests (xxh3-128,
streamed tensor by tensor and file by file, many GB/s): the main process computes the key once per start
(one pass over the weights in memory and the pairs' bytes, seconds next to a reference pass) and the other
ranks receive it instead of re-reading anything.

The cache lives in the run's output folder (`<output_dir>/ref_logps`) or a folder the caller names, never
next to the input pairs, which may be read-only or shared between runs of different models.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import xxhash

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the packing or the log-prob reduction changes
NUMERIC_LIBRARIES = ("torch", "transformers", "trl", "peft")


def tensors_digest(named_tensors) -> tuple[str, int]:
    """(digest, bytes) of (name, tensor) pairs: names, dtypes, shapes and raw bytes, streamed."""
    digest, total = xxhash.xxh3_128(), 0
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        raw = data.reshape(-1).view(torch.uint8).numpy()  # any dtype, bf16 included, as its bytes
        digest.update(memoryview(raw))
        total += raw.nbytes
    return digest.hexdigest(), total


def reference_weights(model, ref_model, adapter_name: str | None) -> dict:
    """The reference's weights as loaded: `ref_model` if there is one, else `model` with only the reference
    adapter (`adapter_name`, e.g. trl's "ref" copy of a continued adapter) among its adapters, or none of them."""
    if ref_model is not None:
        digest, size = tensors_digest(ref_model.state_dict().items())
        return {"source": "ref_model", "digest": digest, "bytes": size}
    peft_config = getattr(model, "peft_config", None) or {}
    others = [name for name in peft_config if name != adapter_name]

    def in_reference(name: str) -> bool:  # the trainable adapter (and any other) is off in the reference
        return not any(f".{other}." in name or name.endswith(f".{other}") for other in others)

    digest, size = tensors_digest((n, t) for n, t in model.state_dict().items() if in_reference(n))
    part = {"source": f"adapter {adapter_name!r} as loaded" if adapter_name else
            ("base model, adapters disabled" if peft_config else "the model as loaded"), "digest": digest,
            "bytes": size}
    if adapter_name:  # scaling, rank, targets: the adapter's numerics beyond its tensors
        part["adapter_config"] = json.loads(json.dumps(peft_config[adapter_name].to_dict(), default=str))
    return part


def model_config_part(model) -> dict:
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version"):  # a path is not numerics; versions are their own part
        config.pop(volatile, None)
    text = json.dumps(config, sort_keys=True, default=str)
    return {"model_type": config.get("model_type"), "attention": model.config.get_text_config()._attn_implementation,
            "digest": _digest(text)}


def processor_part(processor) -> dict:
    """Image-processor settings, tokenizer (vocabulary, normalisation, special tokens) and chat template."""
    tokenizer = getattr(processor, "tokenizer", processor)
    settings = processor.to_dict() if hasattr(processor, "to_dict") else {}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        vocabulary = json.loads(backend.to_str())
        for per_call in ("padding", "truncation"):  # set by each call (the collator pads explicitly)
            vocabulary.pop(per_call, None)
        vocabulary = json.dumps(vocabulary, sort_keys=True)
    else:
        vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()))
    template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    specials = {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()}
    return {"class": type(processor).__name__,
            "settings": _digest(json.dumps(settings, sort_keys=True, default=str)),
            "tokenizer": _digest(vocabulary + json.dumps(specials, sort_keys=True)),
            "chat_template": _digest(json.dumps(template, sort_keys=True, default=str))}


def dataset_part(dataset, progress: bool = False) -> dict:
    """Digest of every pair's texts and image bytes, in order (files read as they are now, not their paths)."""
    import datasets

    features = dataset.features
    image_columns = [c for c in ("images", "image") if c in dataset.column_names]
    for column in image_columns:  # raw bytes/paths instead of decoded pixels: cheaper, and exact
        inner = features[column]
        undecoded = (datasets.Sequence(datasets.Image(decode=False)) if isinstance(inner, (datasets.Sequence, list))
                     else datasets.Image(decode=False))
        dataset = dataset.cast_column(column, undecoded)
    if "videos" in dataset.column_names:  # clips of frames (data_gen/pairs.py): hashed frame by frame, like images
        dataset = dataset.cast_column("videos", datasets.Sequence(datasets.Sequence(datasets.Image(decode=False))))
        image_columns.append("videos")
    text_columns = [c for c in dataset.column_names if c not in image_columns and not c.startswith("ref_")]
    digest = xxhash.xxh3_128()
    rows = dataset.iter(batch_size=256)
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=-(-len(dataset) // 256), desc="hashing pairs (texts and image bytes)")
    for batch in rows:
        for i in range(len(batch[text_columns[0]] if text_columns else batch[image_columns[0]])):
            texts = {c: batch[c][i] for c in text_columns}
            digest.update(json.dumps(texts, sort_keys=True, default=str).encode())
            for column in image_columns:
                images = batch[column][i]
                if column == "videos":  # one marker per clip, so frames regrouped into other clips change the key
                    images = [frame for clip in images for frame in [{"bytes": b"<clip>", "path": None}, *clip]]
                for image in images if isinstance(images, list) else [images]:
                    _update_with_image(digest, image)
    return {"pairs": len(dataset), "columns": sorted(text_columns + image_columns), "digest": digest.hexdigest()}


def _update_with_image(digest, image) -> None:
    if image is None:
        digest.update(b"<no image>")
    elif image.get("bytes") is not None:
        digest.update(image["bytes"])
    else:
        with open(image["path"], "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    digest.update(b"<end of image>")


def _digest(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode())


def library_versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in NUMERIC_LIBRARIES}


def describe(*, model, ref_model, adapter_name, processor, dataset, args, mdpo, progress=False) -> dict:
    """Everything the reference log-probs depend on, each part readable or a digest (see the module docstring)."""
    autocast = "bf16" if args.bf16 else "fp16" if args.fp16 else "none"
    return {
        "reference": reference_weights(model, ref_model, adapter_name),
        "model_config": model_config_part(ref_model if ref_model is not None else model),
        "processor": processor_part(processor),
        "max_length": args.max_length,
        "dtype": {"weights": str((ref_model if ref_model is not None else model).dtype), "autocast": autocast},
        "mdpo": mdpo.key() if mdpo is not None else None,
        "dataset": dataset_part(dataset, progress),
        "libraries": library_versions(),
        "cache_version": CACHE_VERSION,
    }


def key_of(description: dict) -> str:
    return _digest(json.dumps(description, sort_keys=True))[:24]


class RefLogpsCache:
    """`ref_logps-<key>.pt` (the values) and `ref_logps-<key>.json` (what they were computed from) in `folder`."""

    def __init__(self, folder: str | Path, description: dict):
        self.folder = Path(folder)
        self.description = description
        self.key = key_of(description)
        self.file = self.folder / f"ref_logps-{self.key}.pt"
        self.description_file = self.file.with_suffix(".json")

    def load(self, names: tuple[str, ...], length: int) -> dict | None:
        """The cached columns, or None (missing, or not one value per pair for every column)."""
        if not self.file.exists():
            return None
        values = torch.load(self.file, weights_only=True)
        if all(len(values.get(name, ())) == length for name in names):
            return values
        return None

    def save(self, values: dict, computed: dict) -> None:
        """Write values and description atomically; a folder that cannot be written costs only the reuse."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path, write in ((self.file, lambda tmp: torch.save(values, tmp)),
                                (self.description_file, lambda tmp: tmp.write_text(json.dumps(
                                    {"key": self.key, "depends_on": self.description, "computed": computed},
                                    indent=2, sort_keys=True)))):
                tmp = path.with_suffix(f"{path.suffix}.tmp{os.getpid()}")
                write(tmp)
                tmp.replace(path)
        except OSError as err:
            logger.warning("fast DPO: could not cache reference log-probs in %s: %s", self.folder, err)

    def explain_miss(self) -> str:
        """Which parts differ from the newest earlier description in the folder ('' when there is none)."""
        earlier = sorted(self.folder.glob("ref_logps-*.json"), key=lambda p: p.stat().st_mtime) \
            if self.folder.is_dir() else []
        earlier = [p for p in earlier if p != self.description_file]
        if not earlier:
            return ""
        try:
            previous = json.loads(earlier[-1].read_text())["depends_on"]
        except (OSError, ValueError, KeyError):
            return ""
        changed = []
        for name in sorted(set(previous) | set(self.description)):
            before, now = previous.get(name), self.description.get(name)
            if before == now:
                continue
            if isinstance(before, dict) and isinstance(now, dict):  # name the field too: processor.chat_template
                changed += [f"{name}.{field}" for field in sorted(set(before) | set(now))
                            if before.get(field) != now.get(field)]
            else:
                changed.append(name)
        return f"changed since {earlier[-1].name}: {', '.join(changed)}" if changed else ""
