"""The tiny instruction-tuned checkpoint: a LLaVA-architecture model that halign builds by itself.

A CLIP vision tower, LLaVA's two-layer projector and a Llama decoder from `transformers`, a word-level
tokenizer over the toy world's words, a chat template, and a supervised fine-tune on the toy world's
*noisy* captions and yes/no questions. The result is saved in standard Hugging Face format, so every later
stage loads it with `AutoModelForImageTextToText` / `AutoProcessor` like any hub checkpoint.

The standard checkpoint (seed 0) is **shipped with the package** (`data_gen/shipped/`, 2.5 MB) with the
hashes of its files and the command that built it, so every user's demo starts from the same weights. A
seeded build is bit-identical on one machine, but thousands of float32 SFT steps amplify the last-bit
differences between CPUs (vector width, BLAS kernels) into a different model: the same seed gave toy POPE
0.981 on one machine and 0.948 on another. Shipping is the only way to the same starting point everywhere.
Rebuild it with `halign toy-checkpoint --ship` (after changing the recipe below: bump BUILDER_VERSION).

Other configurations (other seeds, the quick test checkpoint) are built on first use and cached under
`$HALIGN_CACHE` (else `$XDG_CACHE_HOME/halign`, else `~/.cache/halign`), in a folder named by a hash of
everything that shapes the weights. A checkpoint, shipped or cached, whose files no longer match the hashes
recorded at build time is never trusted: a cached one is rebuilt, a shipped one is rebuilt in the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from halign.data_gen import toy_world
from halign.data_gen.io import file_sha256, stable_hash, write_json

BUILDER_VERSION = 1  # bump when the recipe below changes: old cache entries are then ignored
BUILD_RECORD = "halign_build.json"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"  # checkpoints that come with the package
SHIP_COMMAND = "halign toy-checkpoint --ship"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:"]
# Prefix-consistent template: the prompt rendered with add_generation_prompt is an exact prefix of the
# full conversation, which is what trl's DPO collator and our samplers rely on.
def chat_template(video: bool = False) -> str:
    """The toy checkpoints' chat template; with `video`, a {"type": "video"} part renders as <video>."""
    video_part = "{% elif part['type'] == 'video' %}<video>" if video else ""
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}USER:"
        "{% if message['content'] is string %} {{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<image>" + video_part
        + "{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{% elif message['role'] == 'assistant' %}ASSISTANT:"
        "{% if message['content'] is string %} {{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}</s>"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


CHAT_TEMPLATE = chat_template()
PUNCTUATION = (".", ",", "?", ":", "!")


@dataclass(frozen=True)
class ToyCheckpointConfig:
    world: toy_world.ToyWorldConfig = field(default_factory=toy_world.ToyWorldConfig)
    seed: int = 0
    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 128
    text_layers: int = 3
    heads: int = 4
    sft_scenes: int = 4000
    # SFT runs at a constant learning rate until the model reads the image (mean loss of the last 100 steps
    # below read_image_loss), then decays over decay_steps; sft_steps caps the run. A fixed budget was fragile:
    # the decoder first settles on a plateau where it writes captions from the text prior alone (loss ~0.4),
    # and how long it stays there depends on the seed. With 1,500 steps seed 0 escaped (final loss 0.08) but
    # seeds 1-3 did not (0.27-0.36): such a checkpoint cannot see (toy POPE 0.63, recall 0.77), and no
    # preference data teaches it to.
    sft_steps: int = 6000
    read_image_loss: float = 0.15
    decay_steps: int = 300
    batch_size: int = 64
    learning_rate: float = 2e-3
    questions_per_scene: int = 1

    def key(self) -> str:
        return stable_hash({"builder": BUILDER_VERSION, **asdict(self)})[:16]


def cache_root() -> Path:
    if os.environ.get("HALIGN_CACHE"):
        return Path(os.environ["HALIGN_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "halign"


# --- tokenizer, processor, model -------------------------------------------------------------------

def toy_words(world: toy_world.ToyWorldConfig) -> list[str]:
    """Every word the toy world's prompts, captions and answers use."""
    words = {"a", "and", "is", "are", "there", "in", "the", "image", "describe", "at", "on", "top", "bottom",
             "left", "right", "center", "object", "objects", "yes", "no", "Yes", "No", "Is", "There",
             "Describe", "it", "not", "of"}
    words.update(world.shapes)
    words.update(s + "s" for s in world.shapes)
    words.update(world.colors)
    words.update(toy_world.NUMBER_WORDS.values())
    return sorted(words)


def build_tokenizer(world: toy_world.ToyWorldConfig, words: list[str] | None = None,
                    specials: list[str] = SPECIAL_TOKENS, template: str = CHAT_TEMPLATE,
                    punctuation: tuple[str, ...] = PUNCTUATION):
    """Word-level tokenizer over `words` (default: the toy world's, `toy_words`). `specials` starts with pad,
    bos, eos and unk; the rest (media placeholders, role markers) are matched before pre-tokenization."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for piece in ["▁", *punctuation] + ["▁" + w for w in (toy_words(world) if words is None else words)]:
        vocab.setdefault(piece, len(vocab))
    # Metaspace keeps word boundaries in the tokens ("▁red"), so decoding restores spaces exactly and
    # punctuation attaches to the word before it, as in a BPE tokenizer.
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[1], eos_token=specials[2], unk_token=specials[3],
        pad_token=specials[0], additional_special_tokens=list(specials[4:]), padding_side="left",
        chat_template=template, model_max_length=256,
    )
    return tokenizer


def build_processor(world: toy_world.ToyWorldConfig):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    side = world.image_size
    image_processor = CLIPImageProcessorPil(
        size={"height": side, "width": side}, crop_size={"height": side, "width": side},
        do_center_crop=False, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(world), patch_size=side // world.grid,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: ToyCheckpointConfig, tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    world = cfg.world
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.heads, image_size=world.image_size, patch_size=world.image_size // world.grid,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 2,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=world.grid * world.grid, tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# --- supervised fine-tuning on the noisy captions --------------------------------------------------

def sft_examples(cfg: ToyCheckpointConfig) -> list[tuple[toy_world.Scene, str, str]]:
    """(scene, question, answer): the noisy caption plus yes/no questions for every SFT scene."""
    examples = []
    for scene in toy_world.make_scenes(cfg.world, "sft", cfg.sft_scenes):
        examples.append((scene, toy_world.CAPTION_PROMPT, scene.noisy_caption))
        rng = toy_world.scene_rng(cfg.seed, "sft-questions", scene.index)
        for q in rng.sample(scene.questions, min(cfg.questions_per_scene, len(scene.questions))):
            examples.append((scene, q["question"], q["answer"] + "."))
    return examples


def encode_examples(processor, world, examples):
    """Tokenize every example once: (input_ids, labels) lists and one pixel tensor per scene."""
    tokenizer = processor.tokenizer
    pixel_cache: dict[str, torch.Tensor] = {}
    scenes = {}
    for scene, _, _ in examples:
        scenes.setdefault(scene.id, scene)
    ids = list(scenes)
    images = [toy_world.draw_scene(world, scenes[i]) for i in ids]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    for i, sid in enumerate(ids):
        pixel_cache[sid] = pixels[i]
    encoded = []
    for scene, question, answer in examples:
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True, tokenize=False)
        prompt = prompt.replace(processor.image_token, processor.image_token * toy_image_tokens(world))
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(" " + answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        encoded.append((scene.id, prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    return encoded, pixel_cache


def toy_image_tokens(world: toy_world.ToyWorldConfig) -> int:
    return world.grid * world.grid


def sft_train(model, processor, cfg: ToyCheckpointConfig, progress: bool = True, log=None) -> list[float]:
    """Supervised fine-tuning (schedule: see ToyCheckpointConfig); without a progress bar, `log` gets a line
    every 500 steps and when the decay starts."""
    encoded, pixels = encode_examples(processor, cfg.world, sft_examples(cfg))
    return sft_loop(model, encoded, lambda ids: {"pixel_values": torch.stack([pixels[i] for i in ids])},
                    processor.tokenizer.pad_token_id, steps=cfg.sft_steps, read_loss=cfg.read_image_loss,
                    decay_steps=cfg.decay_steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                    seed=cfg.seed, progress=progress, log=log, desc="SFT tiny checkpoint")


def sft_loop(model, encoded, vision_inputs, pad_id: int, *, steps: int, read_loss: float, decay_steps: int,
             batch_size: int, learning_rate: float, seed: int, progress: bool = True, log=None,
             desc: str = "SFT") -> list[float]:
    """The toy checkpoints' SFT schedule: a constant learning rate until the model reads its input (mean loss
    of the last 100 steps below `read_loss`), then a decay over `decay_steps`; `steps` caps the run.

    `encoded`: (media id, input_ids, labels) examples, drawn with replacement; `vision_inputs(media ids)`: the
    batch's pixel inputs as model keywords. Without a progress bar, `log` gets a line every 500 steps and
    when the decay starts."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, min(100, steps // 20))
    decay_len = max(1, min(decay_steps, steps))
    decay_from = None  # the step at which the model reads its input (or the budget runs out): decay starts
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        recent = sum(losses[-100:]) / len(losses[-100:]) if len(losses) >= 100 else float("inf")
        if decay_from is None and (recent < read_loss or step >= steps - decay_len):
            decay_from = step
            if log is not None:
                log(f"SFT step {step}: loss {recent:.3f}; learning rate decays over the next {decay_len} steps")
        if decay_from is not None and step >= decay_from + decay_len:
            break
        decay = 1.0 if decay_from is None else max(0.05, 1 - (step - decay_from) / decay_len)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * min(1.0, (step + 1) / warmup) * decay
        batch = [encoded[i] for i in torch.randint(len(encoded), (batch_size,), generator=generator)]
        width = max(len(ids) for _, ids, _ in batch)
        # Right padding for training; the attention mask hides the pads.
        input_ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids, labs) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        vision = vision_inputs([media for media, _, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels, **vision).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if log is not None and len(losses) % 500 == 0:
            log(f"SFT step {len(losses)}: loss {sum(losses[-100:]) / len(losses[-100:]):.3f}")
    model.eval()
    return losses


# --- cache -----------------------------------------------------------------------------------------

def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != BUILD_RECORD}


def verify_checkpoint(folder: Path) -> str | None:
    """None when the cached checkpoint is intact, else the reason it cannot be trusted."""
    record_path = folder / BUILD_RECORD
    if not record_path.exists():
        return "no build record (interrupted build?)"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return "unreadable build record"
    expected = record.get("files", {})
    if not expected:
        return "build record lists no files"
    for name, digest in expected.items():
        path = folder / name
        if not path.exists():
            return f"missing file {name}"
        if file_sha256(path) != digest:
            return f"file {name} does not match its recorded hash"
    return None


def build_checkpoint(cfg: ToyCheckpointConfig, out_dir: Path, progress: bool = True, log=None) -> Path:
    start = time.time()
    torch.manual_seed(cfg.seed)
    processor = build_processor(cfg.world)
    model = build_model(cfg, processor.tokenizer)
    losses = sft_train(model, processor, cfg, progress=progress, log=None if progress else log)
    command = SHIP_COMMAND if out_dir.parent == SHIPPED_DIR else "halign toy-checkpoint"
    return save_build(model, processor, cfg, losses, out_dir, start, command, BUILDER_VERSION)


def save_build(model, processor, cfg, losses: list[float], out_dir: Path, start: float, command: str,
               builder_version: int) -> Path:
    """Save a built checkpoint with its build record (config, key, loss, file hashes, machine) into `out_dir`,
    through a temporary folder, so an interrupted save never leaves a folder that looks complete."""
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    write_json(tmp / BUILD_RECORD, {
        "config": asdict(cfg), "key": cfg.key(), "builder_version": builder_version,
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "build_seconds": round(time.time() - start, 1),
        "steps": len(losses),
        "parameters": sum(p.numel() for p in model.parameters()), "files": _file_hashes(tmp),
        # Where the weights came from: the same seed on another CPU gives other weights (module docstring).
        "built_on": {"machine": platform.machine(), "processor": _cpu_name(), "python": platform.python_version(),
                     "torch": torch.__version__, "transformers": _version("transformers")},
        "command": command,
    })
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def shipped_checkpoint(cfg: ToyCheckpointConfig) -> Path:
    """Where the package keeps its copy of this configuration's checkpoint (present for the standard one)."""
    return SHIPPED_DIR / f"toy-llava-{cfg.key()}"


def get_toy_checkpoint(cfg: ToyCheckpointConfig | None = None, cache_dir: str | Path | None = None,
                       progress: bool = True, log=print) -> Path:
    """Path of the tiny checkpoint: the shipped copy when the package has one for `cfg` and it is intact,
    else the cached build, building it (or rebuilding a corrupted one) when needed."""
    cfg = cfg or ToyCheckpointConfig()
    shipped = shipped_checkpoint(cfg)
    if shipped.exists():
        problem = verify_checkpoint(shipped)
        if problem is None:
            return shipped
        log(f"the shipped toy checkpoint at {shipped} cannot be trusted ({problem}); building one in the cache")
    root = Path(cache_dir) if cache_dir else cache_root()
    return cached_build(root / f"toy-llava-{cfg.key()}", lambda folder: build_checkpoint(cfg, folder, progress, log),
                        "toy checkpoint", "the tiny toy-world checkpoint (once; a few minutes on 2 CPU cores)", log)


def cached_build(folder: Path, build, what: str, description: str, log=print) -> Path:
    """`folder` when it holds an intact build, else `build(folder)` (rebuilding a corrupted one). `description`
    names the build in the log line, with how long it takes."""
    if folder.exists():
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        log(f"cached {what} at {folder} cannot be trusted ({problem}); rebuilding it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    log(f"building {description} into {folder}")
    return build(folder)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $HALIGN_CACHE or ~/.cache/halign)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cached copy exists")
    parser.add_argument("--ship", action="store_true",
                        help="maintainers: rebuild the standard checkpoint into the package (data_gen/shipped/), "
                             "replacing the shipped one")


def ship(cfg: ToyCheckpointConfig, progress: bool = True, log=print) -> Path:
    """Build `cfg` from scratch into the package's shipped folder; older shipped builds are removed."""
    SHIPPED_DIR.mkdir(exist_ok=True)
    folder = build_checkpoint(cfg, shipped_checkpoint(cfg), progress=progress, log=log)
    for old in SHIPPED_DIR.glob("toy-llava-*"):
        if old != folder:
            shutil.rmtree(old)
    return folder


def main(args: argparse.Namespace) -> int:
    cfg = ToyCheckpointConfig()
    if args.ship:
        print(ship(cfg))
        return 0
    if args.rebuild:
        root = Path(args.cache_dir) if args.cache_dir else cache_root()
        shutil.rmtree(root / f"toy-llava-{cfg.key()}", ignore_errors=True)
    print(get_toy_checkpoint(cfg, args.cache_dir))
    return 0
