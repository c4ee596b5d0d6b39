"""Tiny random checkpoints of the VLM families halign supports, built offline in seconds.

Each builder returns (model, processor): a random-weight model from the family's own config classes and a
processor built from parts made here (a word-level `tokenizers` vocabulary wrapped in
PreTrainedTokenizerFast with the family's special tokens and a chat template, and the family's image
processor with small sizes). `save_family` writes both with save_pretrained, so tests load them through
`AutoModelForImageTextToText` / `AutoProcessor` exactly like a hub checkpoint.

Image processors are always the PIL-backend classes: the default (torchvision) backend cannot be imported
beside the CPU torch wheel we test with, and the PIL classes give the same numbers. Video processors (which
Qwen2-VL/Qwen2.5-VL/SmolVLM/LLaVA-NeXT-Video processors require) are the real classes where torchvision is
installed, and halign's `ImageOnlyVideoProcessor` otherwise (see `video_processor`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

WORDS = ["a", "an", "the", "is", "are", "there", "in", "image", "describe", "what", "red", "blue", "green",
         "circle", "square", "triangle", "star", "cat", "dog", "yes", "no", "and", "of", "on", "left", "right",
         "user", "assistant", "model", "system"]  # role words of the chat templates
PUNCT = [".", ",", "?", ":", "!", "\n"]
FAMILIES = ("llava", "llava_next", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "gemma3", "paligemma")


def pil_image_processor(family_module: str, class_name: str, **kwargs):
    """The PIL-backend image processor of a family (`<Name>ImageProcessorPil`), constructed explicitly.

    Looked up in transformers/models/<family>/image_processing_pil_<family>.py, so a missing class fails
    here with its name rather than deep inside AutoImageProcessor's backend selection.
    """
    module = importlib.import_module(f"transformers.models.{family_module}.image_processing_pil_{family_module}")
    return getattr(module, class_name)(**kwargs)


def video_processor(class_name: str, **kwargs):
    """The family's video processor, or where torchvision is missing (every video processor needs it) an
    `ImageOnlyVideoProcessor` holding the config the real class would be built from.

    Either way `save_pretrained` writes `video_processor_type: <class_name>` plus `kwargs`, so the saved
    checkpoint loads its real video processor wherever torchvision is installed.
    """
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        import transformers

        return getattr(transformers, class_name)(**kwargs)
    from halign.align.processor import ImageOnlyVideoProcessor

    return ImageOnlyVideoProcessor(video_processor_type=class_name, **kwargs)


def make_processor(processor_cls, **parts):
    """`processor_cls(**parts)`; through halign's `construct_image_only` where the video processor is image-only
    (transformers' own constructor rejects every video processor when torchvision is missing)."""
    from halign.align.processor import ImageOnlyVideoProcessor, construct_image_only

    if isinstance(parts.get("video_processor"), ImageOnlyVideoProcessor):
        return construct_image_only(processor_cls, **parts)
    return processor_cls(**parts)


def chat_template(user: tuple[str, str], assistant: tuple[str, str], image: str, bos: str = "",
                  video: str | None = None) -> str:
    """A prefix-consistent template: prompt + add_generation_prompt is an exact prefix of the full chat.

    trl's vision collator cuts the completion off the rendered conversation by that prefix. `video`: how a
    {"type": "video"} part renders (families with native video), else video parts render nothing.
    """
    video_part = "{% if part['type'] == 'video' %}" + video + "{% endif %}" if video else ""

    def content(role_image: bool) -> str:
        return (
            "{% if message['content'] is string %}{{ message['content'] }}"
            "{% else %}{% for part in message['content'] %}"
            + ("{% if part['type'] == 'image' %}" + image + "{% endif %}" + video_part if role_image else "")
            + "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        )
    return (
        bos + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}" + user[0] + content(True) + user[1]
        + "{% elif message['role'] == 'assistant' %}" + assistant[0] + content(False) + assistant[1]
        + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}" + assistant[0] + "{% endif %}"
    )


def build_tokenizer(specials: list[str], template: str, *, bos="<s>", eos="</s>", pad="<pad>",
                    extra_special_tokens: dict | None = None, extra_tokens: list[str] = ()):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = [pad, bos, eos, "<unk>"]
    vocab: dict[str, int] = {}
    for tok in base + list(specials) + list(extra_tokens) + PUNCT + WORDS:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>", pad_token=pad,
        extra_special_tokens=dict(extra_special_tokens or {}), padding_side="left", chat_template=template,
        model_max_length=512,
    )
    # The named tokens above become attributes (tokenizer.image_token); the rest are registered here, as
    # special tokens matched before pre-tokenization (a dict and a list cannot both go to the constructor).
    tokenizer.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    assert len(tokenizer) == len(vocab), "special tokens must reuse their vocabulary ids"
    return tokenizer


def _llama(tokenizer, hidden=32, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **kw)


def _clip(image_size=32, patch=8, hidden=32):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
                            num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=hidden)


def _siglip(image_size=32, patch=8, hidden=32):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size, patch_size=patch)


USER_ASSISTANT = (("USER: ", " "), ("ASSISTANT: ", "</s> "))


def build_llava(with_processor: bool = True):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    template = chat_template(*USER_ASSISTANT, image="<image> ")
    tok = build_tokenizer(["<image>", "USER:", "ASSISTANT:"], template, extra_special_tokens={"image_token": "<image>"})
    ip = pil_image_processor("clip", "CLIPImageProcessorPil", size={"height": 32, "width": 32},
                             crop_size={"height": 32, "width": 32}, do_center_crop=False)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template)
    config = LlavaConfig(vision_config=_clip(), text_config=_llama(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=16)
    return LlavaForConditionalGeneration(config), processor


def build_llava_next(with_processor: bool = True):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    template = chat_template(*USER_ASSISTANT, image="<image> ")
    tok = build_tokenizer(["<image>", "USER:", "ASSISTANT:"], template, extra_special_tokens={"image_token": "<image>"})
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    ip = pil_image_processor("llava_next", "LlavaNextImageProcessorPil", size={"shortest_edge": 32},
                             crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, chat_template=template)
    config = LlavaNextConfig(vision_config=_clip(), text_config=_llama(tok), image_grid_pinpoints=pinpoints,
                             image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                             vision_feature_select_strategy="default", image_seq_length=16)
    return LlavaNextForConditionalGeneration(config), processor


def build_llava_next_video(with_processor: bool = True):
    from transformers import (LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration,
                              LlavaNextVideoProcessor)

    template = chat_template(*USER_ASSISTANT, image="<image> ", video="<video> ")
    named = {"image_token": "<image>", "video_token": "<video>"}
    tok = build_tokenizer(["<image>", "<video>", "USER:", "ASSISTANT:"], template, extra_special_tokens=named)
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    processor = None
    if with_processor:
        ip = pil_image_processor("llava_next", "LlavaNextImageProcessorPil", size={"shortest_edge": 32},
                                 crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
        # Frames: short side to 32, centre-cropped to 32x32 -> 4x4 patches of 8 px -> pooled 2x2 = 4 tokens.
        video = video_processor("LlavaNextVideoVideoProcessor", size={"shortest_edge": 32},
                                crop_size={"height": 32, "width": 32})
        processor = make_processor(LlavaNextVideoProcessor, video_processor=video, image_processor=ip, tokenizer=tok,
                                   patch_size=8, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, chat_template=template)
    # One CLIP layer, 32 px frames of 8 px patches, 1D positions: video pooled 2x2 as in the 7B checkpoint.
    config = LlavaNextVideoConfig(vision_config=_clip(), text_config=_llama(tok), image_grid_pinpoints=pinpoints,
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                                  vision_feature_select_strategy="default", image_seq_length=16,
                                  spatial_pool_mode="average", spatial_pool_stride=2)
    return LlavaNextVideoForConditionalGeneration(config), processor


QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = chat_template(("<|im_start|>user\n", "<|im_end|>\n"), ("<|im_start|>assistant\n", "<|im_end|>\n"),
                              image="<|vision_start|><|image_pad|><|vision_end|>",
                              video="<|vision_start|><|video_pad|><|vision_end|>")


def _qwen_parts(processor_cls, with_processor: bool):
    tok = build_tokenizer(QWEN_SPECIALS, QWEN_TEMPLATE, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    processor = None
    if with_processor:
        # 4-pixel patches merged 2x2: a 32x32 image gives an 8x8 patch grid and 16 image tokens.
        sizes = dict(patch_size=4, merge_size=2, temporal_patch_size=2,
                     size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})
        ip = pil_image_processor("qwen2_vl", "Qwen2VLImageProcessorPil", **sizes)
        video = video_processor("Qwen2VLVideoProcessor", **sizes)
        processor = make_processor(processor_cls, image_processor=ip, tokenizer=tok, video_processor=video,
                                   chat_template=QWEN_TEMPLATE)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [("image_token_id", "<|image_pad|>"), (
        "video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    return processor, ids, text


def build_qwen2_vl(with_processor: bool = True):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    processor, ids, text = _qwen_parts(Qwen2VLProcessor, with_processor)
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    return Qwen2VLForConditionalGeneration(config), processor


def build_qwen2_5_vl(with_processor: bool = True):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    processor, ids, text = _qwen_parts(Qwen2_5_VLProcessor, with_processor)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=16, out_hidden_size=32, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return Qwen2_5_VLForConditionalGeneration(config), processor


IDEFICS_SPECIALS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "User:", "Assistant:"]
IDEFICS_TEMPLATE = chat_template(("User: ", "<end_of_utterance>\n"), ("Assistant: ", "<end_of_utterance>\n"),
                                 image="<image>", bos="<|im_start|>")


def _idefics_parts(family: str, class_name: str):
    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = build_tokenizer(IDEFICS_SPECIALS, IDEFICS_TEMPLATE, bos="<|im_start|>", eos="<end_of_utterance>",
                          pad="<|endoftext|>", extra_tokens=rows)
    # No splitting: one 32x32 image -> 16 patches of 8 px -> pixel shuffle by 2 -> 4 image tokens.
    ip = pil_image_processor(family, class_name, size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                             do_image_splitting=False)
    return tok, ip


def build_idefics3(with_processor: bool = True):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    tok, ip = _idefics_parts("idefics3", "Idefics3ImageProcessorPil")
    processor = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS_TEMPLATE)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    config = Idefics3Config(vision_config=vision, text_config=_llama(tok).to_dict(), scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return Idefics3ForConditionalGeneration(config), processor


def build_smolvlm(with_processor: bool = True):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor

    tok, ip = _idefics_parts("smolvlm", "SmolVLMImageProcessorPil")
    processor = None
    if with_processor:
        # SmolVLMProcessor needs the `num2words` package (a halign dependency).
        processor = make_processor(SmolVLMProcessor, image_processor=ip, tokenizer=tok, image_seq_len=4,
                                   video_processor=video_processor("SmolVLMVideoProcessor"), chat_template=IDEFICS_TEMPLATE)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    config = SmolVLMConfig(vision_config=vision, text_config=_llama(tok).to_dict(), scale_factor=2,
                           image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return SmolVLMForConditionalGeneration(config), processor


def build_gemma3(with_processor: bool = True):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig

    template = chat_template(("<start_of_turn>user\n", "<end_of_turn>\n"), ("<start_of_turn>model\n", "<end_of_turn>\n"),
                             image="<start_of_image>", bos="<bos>")
    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tok = build_tokenizer(["<start_of_turn>", "<end_of_turn>", *named.values()], template, bos="<bos>", eos="<eos>",
                          extra_special_tokens=named)
    ip = pil_image_processor("gemma3", "Gemma3ImageProcessorPil", size={"height": 32, "width": 32})
    # 32 px / 8 px patches = 4x4, average-pooled to 2x2 = 4 soft tokens per image.
    processor = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4, chat_template=template)
    text = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                            sliding_window=16, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id,
                            # one layer of each kind (rows are longer than the window, so it matters)
                            layer_types=["sliding_attention", "full_attention"])
    config = Gemma3Config(text_config=text, vision_config=_siglip(), mm_tokens_per_image=4,
                          image_token_id=tok.convert_tokens_to_ids("<image_soft_token>"),
                          boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                          eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
    model = Gemma3ForConditionalGeneration(config)
    # Gemma3 initialises the projector's weight to zeros, which would block every gradient to the vision tower
    # on a first step; a trained checkpoint never has that, so give the tiny one random values.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.02)
    return model, processor


def build_paligemma(with_processor: bool = True):
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.paligemma.processing_paligemma import EXTRA_TOKENS

    # PaliGemma checkpoints have no chat turns: the prompt is the prefix, the answer the suffix.
    template = chat_template(("", ""), ("", "<eos>"), image="<image>")
    tok = build_tokenizer(["<image>"], template, bos="<bos>", eos="<eos>", extra_tokens=EXTRA_TOKENS,
                          extra_special_tokens={"image_token": "<image>"})
    ip = pil_image_processor("siglip", "SiglipImageProcessorPil", size={"height": 32, "width": 32})
    ip.image_seq_length = 16  # 32 px / 8 px patches
    processor = PaliGemmaProcessor(image_processor=ip, tokenizer=tok, chat_template=template)
    # Two layers: with one, only the last prompt token reads the prompt's attention outputs, and it sees the
    # whole prompt under a causal mask too, so a lost prefix-LM (bidirectional) mask would go unnoticed.
    text = GemmaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = PaliGemmaConfig(text_config=text.to_dict(), vision_config=_siglip(), projection_dim=32,
                             image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    config.vision_config.projection_dim = 32
    return PaliGemmaForConditionalGeneration(config), processor


BUILDERS = {name: globals()[f"build_{name}"] for name in FAMILIES}


def build_family(name: str, seed: int = 0, with_processor: bool = True):
    """(model, processor); with_processor=False may return (model, None) when only the model is needed."""
    torch.manual_seed(seed)
    # Only the Qwen, SmolVLM and LLaVA-NeXT-Video builders act on the flag: it skips their processor (and its video processor).
    return BUILDERS[name](with_processor=with_processor)


def save_family(name: str, path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random checkpoint + processor; returns the folder."""
    path = Path(path)
    model, processor = build_family(name, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
