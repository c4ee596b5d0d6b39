"""`halign export --merge`: fold a LoRA adapter into its base model, as a standalone checkpoint.

The result loads with `AutoModelForImageTextToText` / `AutoProcessor` like any hub checkpoint, which is
what the next RLAIF round, vLLM and users' own code need.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, write_manifest


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    from halign.align.model import load_policy

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists():
        raise ValueError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    started = time.time()
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    model, processor = load_policy(adapter_dir, dtype=dtype, device="cpu")  # load_policy merges the adapter
    out = ensure_writable_dir(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_manifest(out, "export", {"adapter": str(adapter_dir), "base": base, "dtype": dtype},
                   {"adapter_config": config_path}, started)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="LoRA output folder of `halign train`")
    parser.add_argument("--out", required=True, help="folder for the merged checkpoint")
    parser.add_argument("--merge", action="store_true", default=True,
                        help="merge the adapter into the base weights (the only export mode)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def main(args: argparse.Namespace) -> int:
    print(merge_adapter(args.adapter, args.out, args.dtype))
    return 0
