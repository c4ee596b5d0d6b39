"""Recipe configs for `halign run`: loading, `key=value` overrides, defaults, and start-up validation.

Precedence: dataclass defaults < recipe YAML < CLI overrides. Keys are the library's own names
(SampleConfig, judge constructor options, PairsConfig, DPOConfig under train.dpo, LoraConfig under
train.peft). Every key is checked here, before any model is loaded, and errors name the key. Features a
recipe may declare before the library has them (a planned judge, a DeepSpeed config not shipped yet) are
valid keys: they are reported by `notes()` and refused only at execution.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import yaml

from halign.data_gen.fields import from_mapping

SECTIONS = ("model", "seed", "rounds", "toy_checkpoint", "source", "sample", "judge", "omission_negatives", "pairs",
            "train", "eval", "gate")
# Sources the engine draws itself (typed in recipes/sections.py); a spec of data_gen/sources.py
# (LOADED_SOURCES) is read by load_source, which checks its own keys, and is the same pool every round.
ENGINE_SOURCES = ("jsonl", "toy_world", "toy_video")
LOADED_SOURCES = ("toy", "json", "hf", "coco", "video")
# Built-in judges that recipes may already name; until they are registered they fail at execution only.
PLANNED_JUDGES = {"claims": "claim-level verifier judge"}


def find_recipe(path: str | Path) -> Path:
    """The path as given, else a recipe shipped with the package (`halign run toy_world.yaml`)."""
    path = Path(path)
    if path.exists():
        return path
    shipped = Path(str(resources.files("halign.recipes"))) / path.name
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"recipe not found: {path}")


def load_recipe(path: str | Path) -> dict:
    path = find_recipe(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping of sections {list(SECTIONS)}")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` sets a nested key (data_gen/overrides.py, the one parser of `key=value` settings)."""
    from halign.data_gen.overrides import apply_overrides as apply

    return apply(raw, overrides)


def _unknown(where: str, given: dict, known) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise ValueError(f"unknown key {where}.{extra[0]}" + (f" (and {extra[1:]})" if extra[1:] else "")
                         + f"; known keys: {sorted(known)}")


def _section(raw: dict, name: str, default=None) -> dict:
    value = raw.get(name, default)
    if value is None:
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _check_source(where: str, src: dict | None) -> dict:
    types = list(ENGINE_SOURCES) + list(LOADED_SOURCES if where == "source" else ())
    if not src or "type" not in src:
        raise ValueError(f"{where}.type is required: one of {types}")
    if src["type"] not in types:
        raise ValueError(f"{where}.type must be one of {types}, got {src['type']!r}")
    if src["type"] in LOADED_SOURCES:
        return _check_loaded(where, src)
    from halign.recipes.sections import JsonlSource, ToyVideoSource, ToyWorldSource

    if src["type"] == "toy_video":  # clips per round: round r draws the r-th slice of n
        _unknown(where, src, [f.name for f in dataclasses.fields(ToyVideoSource)] + ["as"])
        _check_as(where, src)
        from_mapping(where, ToyVideoSource, {k: v for k, v in src.items() if k != "as"})
        return {"type": "toy_video", "split": "dpo", "n": 100, "start": 0, "as": "images", **src}

    if src["type"] == "jsonl":  # n: records per round (round r reads slice r); absent: the whole file
        from_mapping(where, JsonlSource, src)
        return {"type": "jsonl", "max_images": None, **src}
    from halign.data_gen.toy_world import ToyWorldConfig

    if where == "eval.source" and src.get("qa_fraction"):
        raise ValueError("eval.source.qa_fraction: existence questions are mixed into training prompts only; "
                         "the eval scenes stay held out (POPE asks them)")
    from_mapping(where, ToyWorldSource, src)
    src = {"type": "toy_world", "split": "dpo", "n": 600, "start": 0, "exclude_seen": False, "world": {},
           "qa_fraction": 0.0, **src}
    _unknown(f"{where}.world", src["world"] or {}, [f.name for f in dataclasses.fields(ToyWorldConfig)])
    return src


def _check_as(where: str, src: dict) -> None:
    """`as` (a Python keyword, so no dataclass field): how a clip is fed, frames as images or native video."""
    from halign.data_gen.sources import VIDEO_MODES

    mode = src.get("as", "images")
    if mode not in VIDEO_MODES or (mode == "video" and "video" not in src["type"]):
        raise ValueError(f"{where}.as must be one of {list(VIDEO_MODES)} ('video' only for the video and toy_video "
                         f"sources), got {mode!r}")


def _check_loaded(where: str, src: dict) -> dict:
    """A data_gen/sources.py spec: its keys (each type's, SPEC_KEYS), `as`, and the frame sampling keys'
    types and values, so a misspelt or impossible key fails before any model loads, naming it."""
    from halign.data_gen.sources import SPEC_KEYS

    from halign.recipes.sections import VideoSampling

    _unknown(where, src, SPEC_KEYS[src["type"]])
    if "as" in SPEC_KEYS[src["type"]]:
        _check_as(where, src)
    sampling = [f.name for f in dataclasses.fields(VideoSampling)]
    from_mapping(where, VideoSampling, {k: v for k, v in src.items() if k in sampling})
    return src


def _dataclass(where: str, cls, values: dict, **fixed):
    """A library dataclass (SampleConfig, PairsConfig) from a recipe section, errors naming the key."""
    return from_mapping(where, cls, values, **fixed)


def resolve(raw: dict) -> dict:
    """Defaults filled in and every key validated; the result is what the runner executes and hashes."""
    from halign.data_gen.pairs import PairsConfig
    from halign.data_gen.sample import SampleConfig
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig

    from halign.recipes.sections import RecipeTop

    _unknown("recipe", raw, SECTIONS)
    if not raw.get("model"):
        raise ValueError("model is required: a checkpoint folder, a hub id, or `toy`")
    top = from_mapping("recipe", RecipeTop, {"model": str(raw["model"]),
                                             **{k: raw[k] for k in ("seed", "rounds", "omission_negatives") if k in raw}})
    seed, rounds = top.seed, top.rounds
    cfg = {"model": top.model, "seed": seed, "rounds": rounds}
    cfg["toy_checkpoint"] = _section(raw, "toy_checkpoint", {})
    if cfg["model"] == "toy_video":  # the video checkpoint's settings (its clips and seed: the recipe's)
        from halign.data_gen.toy_video_checkpoint import ToyVideoCheckpointConfig as ToyCheckpointConfig
    _unknown("toy_checkpoint", cfg["toy_checkpoint"], [f.name for f in dataclasses.fields(ToyCheckpointConfig)
                                                       if f.name not in ("world", "video", "seed")])
    cfg["source"] = _check_source("source", _section(raw, "source"))

    sample = {"seed": seed, **_section(raw, "sample", {})}
    cfg["sample"] = dataclasses.asdict(_dataclass("sample", SampleConfig, sample, model=cfg["model"]))
    del cfg["sample"]["model"]  # one model key for the whole recipe
    if not cfg["sample"]["complete_yes_no"]:  # off: the stage keys runs had before the option existed
        del cfg["sample"]["complete_yes_no"]

    judge = _section(raw, "judge", {"name": "grounding"})
    cfg["judge"] = {"name": "grounding", **judge}
    _check_judge(cfg["judge"])
    cfg["omission_negatives"] = top.omission_negatives

    pairs = {"seed": seed, **_section(raw, "pairs", {})}
    cfg["pairs"] = dataclasses.asdict(_dataclass("pairs", PairsConfig, pairs))
    if cfg["pairs"]["strategy"] == "corrected" and cfg["judge"]["name"] == "grounding":
        raise ValueError("pairs.strategy=corrected needs a judge that writes corrected answers "
                         "(judge.name=caption); the grounding judge writes none")

    cfg["train"], cfg["train_resolved"] = _resolve_train(_section(raw, "train", {}), seed)
    ev = _section(raw, "eval", {})
    if cfg["train"] is None and (rounds > 1 or ev is not None):
        raise ValueError("train: null (stop after the pairs) needs rounds: 1 and eval: null")
    if ev is not None:
        from halign.recipes.sections import EvalSection

        from_mapping("eval", EvalSection, ev)
        ev = {"benchmark": "toy", "metric": {}, "max_new_tokens": 64, "batch_size": 64, "before": True,
              "rounds": "every", **ev}
        ev["source"] = _check_source("eval.source", ev.get("source"))
        _check_eval_metric(ev)
        _check_held_out_clips(cfg["source"], ev["source"])
    cfg["eval"] = ev
    cfg["gate"] = _check_gate(raw, cfg)
    return cfg


def _resolve_train(train: dict | None, seed: int) -> tuple[dict | None, dict | None]:
    """(train section with defaults, {"dpo", "peft"} with halign's DEFAULT_* applied); (None, None) for
    train: null, a recipe that stops after the pairs (`halign gen-pairs`)."""
    from halign.align.dpo import TrainConfig, check_keys

    from halign.recipes.sections import TrainSection

    if train is None:
        return None, None
    from_mapping("train", TrainSection, train)
    dpo = {"seed": seed, **(train.get("dpo") or {})}
    peft = train.get("peft", {})
    tc = TrainConfig(model="", pairs="", output_dir="", dpo=dpo, peft=peft)
    from peft import LoraConfig
    from trl import DPOConfig

    for kind, given, cls in (("train.dpo", tc.dpo_args(), DPOConfig), ("train.peft", tc.lora_args() or {}, LoraConfig)):
        check_keys(kind, given, cls)
    args = tc.dpo_args()
    losses = args["loss_type"] if isinstance(args["loss_type"], list) else [args["loss_type"]]
    if args.get("loss_weights") is not None and len(args["loss_weights"]) != len(losses):
        raise ValueError(f"train.dpo.loss_weights has {len(args['loss_weights'])} entries for "
                         f"{len(losses)} loss_type(s)")
    from halign.align.mdpo import MdpoConfig
    from halign.align.qlora import quantization_args

    # Settings are checked here (unknown keys named); hardware (bitsandbytes, a GPU) only at execution.
    mdpo = train.get("mdpo") or None
    MdpoConfig.from_setting(mdpo)
    quantization = train.get("quantization") or None
    quantization_args(quantization, lora=peft is not None)
    out = {"dpo": dpo, "peft": peft, "dtype": train.get("dtype", "float32"),
           "accelerate_config": train.get("accelerate_config"), "mdpo": mdpo, "quantization": quantization}
    # Keys added only when set, so that recipes written before they existed keep their stage keys.
    for key in ("num_processes", "fast", "row_tokens"):
        if train.get(key) is not None:
            out[key] = train[key]
    return out, {"dpo": args, "peft": tc.lora_args()}  # train_resolved: shown in the plan; DEFAULT_* applied


def _check_eval_metric(ev: dict) -> None:
    """eval.benchmark names a metric of the registry (rewards/metrics.py) that a recipe can score; eval.metric
    holds that metric's options."""
    from halign.rewards.metrics import METRICS, recipe_benchmarks

    benchmarks = recipe_benchmarks()
    if ev["benchmark"] not in benchmarks:
        raise ValueError(f"eval.benchmark must be one of {benchmarks}, got {ev['benchmark']!r}")
    options = METRICS[ev["benchmark"]].options()
    if not options and ev["metric"]:
        with_options = [name for name in benchmarks if METRICS[name].options()]
        raise ValueError(f"eval.metric options apply to benchmark {', '.join(with_options)} only")
    if options is not None:
        _unknown("eval.metric", ev["metric"], options)


def _check_held_out_clips(src: dict, ev: dict) -> None:
    """Toy clips are held out by their stream (split): the eval clips must come from one that neither the
    checkpoint's SFT (sft), a round's judge (the source's) nor the gate (val) reads."""
    if ev["type"] != "toy_video":
        return
    taken = {"sft", "val"} | ({src["split"]} if src["type"] == "toy_video" else set())
    if ev["split"] in taken:
        raise ValueError(f"eval.source.split: the eval clips must be held out, but {ev['split']!r} is read by "
                         f"the SFT (sft), the gate (val) or the training source; use e.g. 'eval'")


def _check_gate(raw: dict, cfg: dict) -> dict | None:
    """gate: which round `rounds: R > 1` keeps (recipes/round_gate.py), scored on validation records: the toy
    world's val split with a toy-world eval (the moving toy world's with a toy_video one), else `gate.source`
    (a jsonl source, disjoint from eval's).
    Absent: on whenever there are rounds and an eval, or `eval.rounds: kept` (then also with one round: the
    gate weighs it against the model before alignment); null: off (the last round is kept)."""
    from halign.recipes.round_gate import GateRule

    gate = _section(raw, "gate", {})
    kept = cfg["eval"] is not None and cfg["eval"]["rounds"] == "kept"
    if gate is None and kept:
        raise ValueError("eval.rounds: kept needs the gate (gate: null keeps the last round; use eval.rounds: every)")
    if gate is None or (cfg["rounds"] == 1 and not kept) or cfg["eval"] is None:
        return None
    _unknown("gate", gate, [*GateRule.__dataclass_fields__, "source"])
    try:
        GateRule(**{k: v for k, v in gate.items() if k != "source"})
    except (ValueError, TypeError) as err:
        raise ValueError(f"gate: {err}") from None
    if gate.get("source") is not None:
        gate["source"] = _check_source("gate.source", gate["source"])
        if gate["source"]["type"] != "jsonl":
            raise ValueError("gate.source: a toy-world run draws its own validation split; give a jsonl source here")
    elif cfg["eval"]["source"]["type"] not in ("toy_world", "toy_video"):
        raise ValueError("gate.source is required with a jsonl eval source: validation records (disjoint from the "
                         "eval records) to choose the round on; or gate: null to keep the last round")
    return gate


def _check_judge(judge: dict) -> None:
    from halign.rewards.judges.registry import JUDGES, accepted_options, judge_class

    name, options = judge["name"], {k: v for k, v in judge.items() if k != "name"}
    if name in PLANNED_JUDGES and name not in JUDGES:
        return  # options cannot be checked yet; execution refuses (see notes())
    cls = judge_class(name)  # unknown names fail here, naming the built-ins
    accepted = accepted_options(cls)
    if accepted is not None:
        extra = sorted(set(options) - accepted)
        if extra:
            raise ValueError(f"unknown key judge.{extra[0]}: judge {name!r} takes {sorted(accepted - {'progress'})}")


def notes(cfg: dict) -> list[str]:
    """What this recipe asks for that cannot execute in this version or on this machine (dry-run shows
    them; `blocking` ones make execution refuse before any stage runs)."""
    from halign.rewards.judges.registry import JUDGES

    out = []
    train = cfg["train"] or {}
    if train.get("quantization"):
        from halign.align.qlora import check_hardware

        try:
            check_hardware()
        except ValueError as err:
            out.append(f"train.quantization: {err}")
    if cfg["judge"]["name"] in PLANNED_JUDGES and cfg["judge"]["name"] not in JUDGES:
        out.append(f"judge.name: {cfg['judge']['name']!r} ({PLANNED_JUDGES[cfg['judge']['name']]}) is not "
                   f"implemented yet; built-ins: {sorted(JUDGES)}")
    acc = train.get("accelerate_config")
    if acc:
        from halign.align.launch import SHIPPED, config_path

        try:
            config_path(acc)
        except ValueError:
            out.append(f"train.accelerate_config: {acc!r} is neither a shipped config {SHIPPED} nor a file")
    for where, src in (("source", cfg["source"]), ("eval.source", (cfg["eval"] or {}).get("source")),
                       ("gate.source", (cfg["gate"] or {}).get("source"))):
        if src and src["type"] == "jsonl" and not Path(src["path"]).exists():
            out.append(f"{where}.path: {src['path']} does not exist on this machine")
    return out
