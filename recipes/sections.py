"""The engine's own recipe sections as typed dataclasses, each field with its help (data_gen/fields.py).

`recipes/config.py` checks a recipe's top level, its sources, its train and eval sections against these
before any model loads (unknown keys, types, impossible values, each error naming the key). The other
sections are the library's own dataclasses: `sample` is data_gen/sample.py's SampleConfig, `pairs`
data_gen/pairs.py's PairsConfig, `gate` recipes/round_gate.py's GateRule, `toy_checkpoint`
data_gen/toy_checkpoint.py's ToyCheckpointConfig, `train.dpo` trl's DPOConfig and `train.peft` peft's
LoraConfig; a judge's options are its constructor's keywords.
"""

from __future__ import annotations

from dataclasses import dataclass

from halign.data_gen.fields import field


@dataclass
class RecipeTop:
    model: str = field(help="a checkpoint folder, a hub id, `toy` (the toy-world checkpoint) or `toy_video` (the "
                            "moving toy world's video checkpoint)")
    seed: int = field(0, help="seeds the toy world and checkpoint, sampling, pairing and DPO")
    rounds: int = field(1, help="RLAIF rounds; each samples with the previous round's policy")
    omission_negatives: bool = field(False, help="judge each clean answer minus its last item too "
                                                 "(data_gen/omissions.py), so stopping early is punished")

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is required: a checkpoint folder, a hub id, or `toy`")
        if self.rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {self.rounds!r}")


@dataclass
class ToyWorldSource:
    type: str = field("toy_world", help="toy_world: scenes drawn by data_gen/toy_world.py")
    split: str = field("dpo", help="which scene stream: dpo, eval, val, sft, track")
    n: int = field(600, help="scenes per round; round r draws the r-th slice of n")
    start: int = field(0, help="index of the first scene of round 1")
    exclude_seen: bool = field(False, help="eval source: leave out every scene drawn like a training scene")
    world: dict | None = field(None, help="ToyWorldConfig overrides (the recipe seed seeds the world)")
    qa_fraction: float = field(0.0, help="share of the prompts that ask a yes/no existence question")

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start!r}")
        if not 0 <= self.qa_fraction <= 1:
            raise ValueError(f"qa_fraction must be a number in [0, 1], got {self.qa_fraction!r}")


@dataclass
class JsonlSource:
    type: str = field("jsonl", help="jsonl: prompt records (JSONL or a JSON list), read as they are")
    path: str = field("", help="the records file")
    max_images: int | None = field(None, help="keep at most this many images (video frames) per record, evenly spread")
    n: int | None = field(None, help="records per round: round r reads the r-th slice of n; absent: the whole "
                                     "file every round")
    start: int | None = field(None, help="index of round 1's first record (with n)")

    def __post_init__(self):
        if not self.path:
            raise ValueError("path is required for a jsonl source")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError("max_images must be >= 1")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if self.start is not None and (self.start < 0 or self.n is None):
            raise ValueError("start is a non-negative record index and needs n (records per round)")


@dataclass
class ToyVideoSource:
    """The moving toy world's clips (data_gen/toy_video.py), drawn by the engine: round r the r-th slice of n.
    `as` (images | video; a Python keyword, so recipes/config.py checks it) says how a clip is fed."""
    type: str = field("toy_video", help="toy_video: clips of the moving toy world (data_gen/toy_video.py)")
    split: str = field("dpo", help="which clip stream: dpo, eval, val (sft: the video checkpoint's)")
    n: int = field(100, help="clips per round; round r draws the r-th slice of n")
    start: int = field(0, help="index of the first clip of round 1")

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start!r}")


@dataclass
class VideoSampling:
    """How a loaded source (data_gen/sources.py: video, json, hf) samples a clip's frames."""
    max_frames: int | None = field(None, help="keep at most this many frames, evenly spaced, the first included")
    fps: float | None = field(None, help="keep this many frames per second of video (needs the clip's rate)")
    video_fps: float | None = field(None, help="the rate of frame-file clips, when records do not give theirs")
    frame_dir: str | None = field(None, help="where decoded video files' frames are written (video files only)")

    def __post_init__(self):
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be a positive integer, got {self.max_frames!r}")
        for name in ("fps", "video_fps"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of frames per second, got {getattr(self, name)!r}")


@dataclass
class TrainSection:
    dpo: dict | None = field(default_factory=dict, help="trl DPOConfig fields over halign's DEFAULT_DPO")
    peft: dict | None = field(default_factory=dict, help="peft LoraConfig fields over halign's DEFAULT_LORA (LoRA by "
                                                         "default); null = full fine-tuning")
    dtype: str = field("float32", help="weights dtype: float32, bfloat16, float16")
    accelerate_config: str | None = field(None, help="single | ddp | zero2 | zero3 (shipped) or an accelerate "
                                                     "config file: the same launcher as halign train")
    num_processes: int | None = field(None, help="processes to start with accelerate_config (default: the config's)")
    mdpo: dict | bool | None = field(None, help="mDPO's image-conditional and anchor terms: true or MdpoConfig fields")
    quantization: dict | bool | None = field(None, help="QLoRA: true or BitsAndBytesConfig fields (CUDA only)")
    fast: bool = field(True, help="false: plain trl.DPOTrainer instead of the packed fast path")
    row_tokens: int | None = field(None, help="fast path: pack several pairs per row, up to this many tokens")

    def __post_init__(self):
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be a positive integer, got {self.num_processes!r}")
        if self.row_tokens is not None and self.row_tokens < 1:
            raise ValueError(f"row_tokens must be a positive number of tokens, got {self.row_tokens!r}")


@dataclass
class EvalSection:
    source: dict | None = field(None, help="the eval records: a toy_world, toy_video or jsonl source")
    benchmark: str = field("toy", help="a metric of the registry a recipe can score (rewards/metrics.py)")
    metric: dict | None = field(default_factory=dict, help="the metric's options")
    max_new_tokens: int = field(64, help="greedy generation length")
    batch_size: int = field(64, help="prompts per generation batch")
    before: bool = field(True, help="score the model before alignment too")
    rounds: str = field("every", help="every: each round's policy on the eval set; kept: the eval set is a test "
                                      "split, scored for the model before alignment and the kept round only")

    def __post_init__(self):
        if self.rounds not in ("every", "kept"):
            raise ValueError(f"rounds must be one of ('every', 'kept'), got {self.rounds!r}")
        if self.rounds == "kept" and not self.before:
            raise ValueError("before must stay true with rounds: kept (the model before alignment is scored "
                             "against the kept round)")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be positive")


def describe_keys() -> list[str]:
    """Every key of the engine's recipe sections with its help, from the dataclasses (`halign run --keys`)."""
    import dataclasses

    from halign.data_gen.pairs import PairsConfig
    from halign.recipes.round_gate import GateRule

    sections = [("", RecipeTop), ("source (type: toy_world)", ToyWorldSource), ("source (type: jsonl)", JsonlSource),
                ("source (type: toy_video; also as: images | video)", ToyVideoSource),
                ("source (types video, json, hf: frame sampling; also as: images | video)", VideoSampling),
                ("pairs", PairsConfig), ("train", TrainSection), ("eval", EvalSection), ("gate", GateRule)]
    lines = []
    for title, cls in sections:
        lines.append(f"{title or 'top level'}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                "required" if f.default_factory is dataclasses.MISSING else f.default_factory())
            lines.append(f"  {f.name:<20} {default!s:<12} {f.metadata.get('help', '')}")
    lines.append("sample: data_gen/sample.py SampleConfig fields; judge: name + the judge's constructor options; "
                 "train.dpo: trl DPOConfig; train.peft: peft LoraConfig; toy_checkpoint: ToyCheckpointConfig; "
                 "gate.source: a jsonl source")
    return lines
