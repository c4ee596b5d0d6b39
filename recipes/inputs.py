"""What the engine's stages read: the model (or the toy checkpoint a recipe names) and prompt records.

Sources across rounds, one rule for every source type: a source's `n` counts the prompts of one round, and
round r takes the r-th consecutive slice of `n` records from `start` (`round_source`). The toy world draws
fresh scenes that way; a JSONL file is read in order, and a round past its end is an error naming the file.
A JSONL source without `n` is its whole file every round: the same pool, sampled again by each new policy,
as RLAIF-V does. Other source types (data_gen/sources.py: hf, coco, video, ...) are one pool every round.
"""

from __future__ import annotations

import copy
from pathlib import Path

from halign.data_gen.io import file_sha256, read_records, stable_hash, write_json, write_jsonl

# Source types the engine draws itself (round slices, toy-world exclusion); any other type goes through
# data_gen/sources.load_source, as `halign gen-pairs --source` reads it.
ENGINE_SOURCES = ("toy_world", "jsonl", "toy_video")


def round_slice(r: int, per_round: int, start: int = 0) -> slice:
    """Round r (0-based) takes slice r of a prompt stream that begins at `start`: every round sees fresh
    prompts and no two rounds share one."""
    return slice(start + r * per_round, start + (r + 1) * per_round)


def round_source(src: dict, r: int) -> dict:
    """The source round r (1-based) reads: slice r of the stream when the source has a per-round `n`."""
    if src["type"] not in ENGINE_SOURCES or (src["type"] == "jsonl" and src.get("n") is None):
        return src
    out = copy.deepcopy(src)
    out["start"] = round_slice(r - 1, src["n"], src.get("start", 0)).start
    return out


# --- model -----------------------------------------------------------------------------------------

TOY_MODELS = ("toy", "toy_video")  # checkpoints halign builds itself: the toy world's, the moving toy world's

def toy_checkpoint_config(cfg: dict):
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig
    from halign.data_gen.toy_world import ToyWorldConfig

    if cfg.get("model") == "toy_video":  # the moving toy world's video checkpoint, on the recipe seed's world
        from halign.data_gen.toy_video import ToyVideoConfig
        from halign.data_gen.toy_video_checkpoint import ToyVideoCheckpointConfig

        return ToyVideoCheckpointConfig(video=ToyVideoConfig(world=ToyWorldConfig(seed=cfg["seed"])), seed=cfg["seed"],
                                        **cfg["toy_checkpoint"])

    # One seed seeds the world, the checkpoint and the alignment (`halign demo`, `halign rlaif` alike).
    return ToyCheckpointConfig(world=ToyWorldConfig(seed=cfg["seed"]), seed=cfg["seed"], **cfg["toy_checkpoint"])


def model_identity(cfg: dict) -> str:
    """What the model is, for stage keys, without loading (or building) it."""
    if cfg["model"] in TOY_MODELS:
        return f"{cfg['model']}:" + toy_checkpoint_config(cfg).key()
    path = Path(cfg["model"])
    if path.is_dir():
        # Names and sizes of every file, contents of the small ones (configs): cheap, and any retrained
        # or swapped checkpoint changes it. Weights are not hashed byte by byte (gigabytes).
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return "dir:" + stable_hash([(str(p.relative_to(path)), p.stat().st_size,
                                      file_sha256(p) if p.stat().st_size < 1 << 20 else None) for p in files])
    return "hub:" + cfg["model"]


def model_path(cfg: dict, log=None) -> str:
    if cfg["model"] not in TOY_MODELS:
        return cfg["model"]
    from halign.data_gen.toy_checkpoint import get_toy_checkpoint
    from halign.data_gen.toy_video_checkpoint import get_toy_video_checkpoint

    kwargs = {"log": log} if log else {"progress": False}
    get = get_toy_video_checkpoint if cfg["model"] == "toy_video" else get_toy_checkpoint
    return str(get(toy_checkpoint_config(cfg), **kwargs))


# --- prompt records --------------------------------------------------------------------------------

def source_identity(src: dict) -> dict:
    if src["type"] == "jsonl" and Path(src["path"]).is_file():
        return {**src, "sha256": file_sha256(src["path"])}
    if src["type"] == "toy_world" and not src.get("qa_fraction"):
        # qa_fraction 0 draws exactly the prompts drawn before the key existed: those runs keep their keys.
        return {k: v for k, v in src.items() if k != "qa_fraction"}
    return src


def write_source(cfg: dict, src: dict, out_dir: Path, seen: set[str] | None = None) -> Path:
    """Prompt records for a source, as prompts.jsonl in out_dir (toy-world images drawn next to it)."""
    out_dir = Path(out_dir)
    if src["type"] == "toy_world":
        from halign.data_gen import toy_world

        world = toy_world.ToyWorldConfig(**{"seed": cfg["seed"], **(src["world"] or {})})
        records = toy_world.write_prompts(world, src["split"], src["n"], out_dir, src["start"], exclude=seen,
                                          qa_fraction=src.get("qa_fraction", 0.0))
        return write_jsonl(out_dir / "prompts.jsonl", records)
    if src["type"] == "toy_video":  # the recipe seed seeds the moving world, as it seeds the toy world
        spec = {k: v for k, v in src.items()} | {"seed": cfg["seed"], "out": str(out_dir)}
        return _write_loaded_source(spec, out_dir)
    if src["type"] != "jsonl":
        return _write_loaded_source(src, out_dir)
    records = read_records(src["path"])
    if src.get("n") is not None:
        window = slice(src.get("start", 0), src.get("start", 0) + src["n"])
        records = records[window]
        if not records:
            raise ValueError(f"source.path {src['path']} has no prompts left from record {window.start} "
                             f"({src['n']} per round)")
    if src.get("max_images"):
        # Video: frames are a multi-image input; keep max_images frames spread evenly over the clip.
        for rec in records:
            frames, m = rec.get("images", []), src["max_images"]
            if len(frames) > m:
                rec["images"] = [frames[round(i * (len(frames) - 1) / (m - 1))] if m > 1 else frames[0]
                                 for i in range(m)]
    return write_jsonl(out_dir / "prompts.jsonl", records)


def _write_loaded_source(src: dict, out_dir: Path) -> Path:
    """A data_gen/sources.py spec (toy, hf, coco, video, ...): its usable records, what it skipped in
    out_dir/skipped.json. A toy source draws its images into out_dir unless the spec says where."""
    from halign.data_gen.sources import load_source

    spec = dict(src)
    if spec["type"] in ("toy", "toy_video"):
        spec.setdefault("out", str(out_dir))
    records, skipped = load_source(spec)
    if not records:
        raise ValueError(f"source {spec} gave no usable prompt ({len(skipped)} skipped)")
    write_json(Path(out_dir) / "skipped.json", skipped)
    return write_jsonl(Path(out_dir) / "prompts.jsonl", records)


def seen_scenes(cfg: dict) -> set[str]:
    """Drawings used to train (toy SFT + every round's DPO source): an `exclude_seen` eval holds them out.
    `cfg` is the recipe's, not a round's: rounds take consecutive slices of the source."""
    from halign.data_gen import toy_world

    seen: set[str] = set()
    if cfg["model"] == "toy":
        ckpt = toy_checkpoint_config(cfg)
        seen |= toy_world.signatures(ckpt.world, "sft", ckpt.sft_scenes)
    src = cfg["source"]
    if src["type"] == "toy_world":
        world = toy_world.ToyWorldConfig(**{"seed": cfg["seed"], **(src["world"] or {})})
        seen |= toy_world.signatures(world, src["split"], cfg["rounds"] * src["n"], src["start"])
    return seen


def eval_records(cfg: dict, folder: Path) -> list[dict]:
    """The eval (test) records, written to folder/source: the same set for every round."""
    ev = cfg["eval"]["source"]
    seen = seen_scenes(cfg) if ev["type"] == "toy_world" and ev["exclude_seen"] else None
    return read_records(write_source(cfg, ev, Path(folder) / "source", seen))


def validation_records(cfg: dict, run_dir: Path, test: list[dict]) -> list[dict]:
    """What the gate scores every round on: `gate.source`, else the toy world's val split, held out from the
    training scenes and from the eval (test) records."""
    if cfg["gate"].get("source") is not None:
        records = read_records(write_source(cfg, cfg["gate"]["source"], run_dir / "validation" / "source"))
        shared = {r["id"] for r in test} & {r["id"] for r in records}
        if shared:
            raise ValueError(f"gate.source and eval.source share ids (e.g. {sorted(shared)[0]!r}): the gate "
                             f"would choose on test data")
        return records
    from halign.data_gen import toy_world
    from halign.recipes.round_gate import toy_validation_prompts

    ev = cfg["eval"]["source"]
    if ev["type"] == "toy_video":  # the val clip stream: no judge, no SFT and no test clip comes from it
        val = {**ev, "split": "val", "n": cfg["gate"].get("val_scenes", 200), "start": 0}
        return read_records(write_source(cfg, val, run_dir / "validation" / "source"))
    world = toy_world.ToyWorldConfig(**{"seed": cfg["seed"], **(ev["world"] or {})})
    return toy_validation_prompts(world, cfg["gate"].get("val_scenes", 200), run_dir / "validation" / "source",
                                  seen_scenes(cfg), test)
