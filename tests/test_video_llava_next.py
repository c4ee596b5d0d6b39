"""LLaVA-NeXT-Video's native video inputs beyond what one clip shows (tests/test_fast_dpo_video.py trains on them).

transformers' processor cannot batch clips of different lengths (it stacks `pixel_values_videos`), so halign
lays them end to end as one clip (`video_processor.llava_next_video_batch`); the model encodes every frame on
its own, so each clip must get exactly the features, and the tokens, it gets alone.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models  # tests/ is on sys.path

PROMPT = "USER: <video> describe the image . ASSISTANT: "


def _clip(n, seed, size=(40, 32)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_clips_of_different_lengths_get_their_own_features():
    from halign.align.video_processor import build_video_inputs

    model, processor = tiny_models.build_family("llava_next_video")
    model.eval()
    clips = [_clip(3, 0), _clip(5, 1, (32, 48)), _clip(2, 2)]
    batch = build_video_inputs(processor, [PROMPT] * 3, clips)
    assert batch["pixel_values_videos"].shape == (1, 10, 3, 32, 32)  # 3 + 5 + 2 frames, end to end
    tokens = (batch["input_ids"] == processor.video_token_id).sum(dim=1)
    assert tokens.tolist() == [4 * 3, 4 * 5, 4 * 2]  # 2x2 pooled 4x4 patches per frame
    with torch.no_grad():
        together = model.model.get_video_features(batch["pixel_values_videos"]).pooler_output.flatten(0, 1)
        alone = [model.model.get_video_features(build_video_inputs(processor, PROMPT, [clip])["pixel_values_videos"])
                 .pooler_output.flatten(0, 1) for clip in clips]
    assert together.shape[0] == int(tokens.sum())
    assert torch.allclose(together, torch.cat(alone), atol=1e-6)


def test_clips_of_one_length_stack_as_transformers_does():
    from halign.align.video_processor import build_video_inputs

    _, processor = tiny_models.build_family("llava_next_video")
    batch = build_video_inputs(processor, [PROMPT] * 2, [_clip(3, 0), _clip(3, 1)])
    assert batch["pixel_values_videos"].shape == (2, 3, 3, 32, 32)


def test_frames_of_different_sizes_are_refused():
    from halign.align.video_processor import llava_next_video_batch

    with pytest.raises(ValueError, match="share a size"):
        llava_next_video_batch([torch.zeros(2, 3, 32, 32), torch.zeros(3, 3, 32, 48)])


def test_video_pairs_name_the_families_that_read_them():
    from halign.align.packing_video import video_pairs_unsupported

    assert video_pairs_unsupported(tiny_models.build_family("llava_next_video", with_processor=False)[0]) is None
    why = video_pairs_unsupported(tiny_models.build_family("llava_next", with_processor=False)[0])
    assert "'llava_next'" in why and "llava_next_video" in why


def test_packed_rows_hold_each_clip_once_per_pair():
    """The fast path's rows: one prompt (with its video tokens) per pair, shared by chosen and rejected, 1D
    positions restarting with each pair; the video tensor holds every clip once."""
    from halign.align.packing import PackedPairCollator

    _, processor = tiny_models.build_family("llava_next_video")
    examples = [{"images": [], "videos": [_clip(n, i)], "video_fps": [2.0],
                 "prompt": [{"role": "user", "content": "describe the image ."}],
                 "chosen": [{"role": "assistant", "content": "a red circle ."}],
                 "rejected": [{"role": "assistant", "content": "a blue star and a cat ."}]}
                for i, n in enumerate((3, 6))]
    batch = PackedPairCollator(processor, row_tokens=4096)(examples)
    assert batch["input_ids"].shape[0] == 1 and batch["position_ids"].dim() == 2
    assert int((batch["input_ids"] == processor.video_token_id).sum()) == 4 * (3 + 6)
    assert batch["pixel_values_videos"].shape[:2] == (1, 9)
    starts = (batch["position_ids"][0] == 0).nonzero()[:, 0].tolist()
    assert starts == [0, int((batch["pair_index"][0] == 0).sum())]  # the second pair restarts at 0


def test_mdpo_is_refused_on_video_pairs():
    from halign.align.packing import PackedPairCollator

    _, processor = tiny_models.build_family("llava_next_video")
    example = {"images": [], "videos": [_clip(2, 0)], "video_fps": [None],
               "prompt": [{"role": "user", "content": "describe"}], "chosen": [{"role": "assistant", "content": "a"}],
               "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(ValueError, match="mdpo"):
        PackedPairCollator(processor, mdpo=object())([example])


def test_video_pairs_on_flex_attention_equal_the_dense_mask():
    """A LLaVA-NeXT-Video loaded with flash_attention_2 runs packed rows on flex_attention (align/packing_flex.py):
    on video pairs its logits equal the dense-mask sdpa ones (CPU flex has no backward; tests/test_fast_dpo_flex.py)."""
    from test_fast_dpo_video import CLIPS, TEXTS, _frames

    from halign.align.packing import PackedPairCollator, packing_unsupported
    from halign.align.packing_flex import pair_block_mask

    model, processor = tiny_models.build_family("llava_next_video")
    model.eval()
    examples = [{"images": [], "videos": [_frames(n, size, i)], "video_fps": [fps],
                 "prompt": [{"role": "user", "content": question}],
                 "chosen": [{"role": "assistant", "content": chosen}],
                 "rejected": [{"role": "assistant", "content": rejected}]}
                for i, ((n, size, fps, _), (question, chosen, rejected)) in enumerate(zip(CLIPS, TEXTS))]
    dense = PackedPairCollator(processor, mask_dtype=torch.bool)(examples)
    flex = PackedPairCollator(processor, flex=True)(examples)
    drop = ("labels", "segments", "record_names", "pair_index", "pair_bounds")
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        expected = model(**{k: v for k, v in dense.items() if k not in drop}).logits
        model.set_attn_implementation("flex_attention")
        assert packing_unsupported(model) is None
        mask = pair_block_mask(flex["pair_index"], flex["pair_bounds"])
        got = model(**{k: v for k, v in flex.items() if k not in drop}, attention_mask=mask).logits
    real = flex["segments"] > 0
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
