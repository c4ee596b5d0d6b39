"""Can the tiny video checkpoint's vision tower tell the shapes of a frame apart? (Not a test: a measurement.)

A perception probe, side by side for two ways of drawing the moving toy world's clips:
  gliding     each shape drawn at its path's exact pixel position on every frame, so it straddles grid
              cells and, after LLaVA-NeXT-Video's 2 x 2 pooling, video tokens;
  cell-to-cell  the moving toy world as it is (data_gen/toy_video.py): each shape drawn at the centre of the
              cell its path has reached, one whole shape per video token.
The probe is the checkpoint's vision tower (CLIP, the standard ToyVideoCheckpointConfig's width, depth and
patch size, random init), the 2 x 2 average pooling, and a small head on each pooled token, max-pooled over
the tokens into one logit per (colour, shape): trained to name every coloured shape on a frame, on the frames
of the SFT clips, then scored on frames of held-out clips (split "eval"). Exact = every colour-shape of the
frame named and nothing else. Same seed, steps and batches for both.

    MALLOC_MMAP_MAX_=0 flock /tmp/halign-heavy.lock python tests/benchmarks/video_perception_probe.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from halign.data_gen import toy_video
from halign.data_gen.toy_video_checkpoint import ToyVideoCheckpointConfig
from halign.data_gen.toy_world import ToyObject, draw_objects


def gliding_frames(cfg: toy_video.ToyVideoConfig, clip: toy_video.Clip):
    """The clip with each shape at its path's exact pixel position (the drawing the world no longer uses)."""
    return [draw_objects(cfg.world, [ToyObject(t.shape, t.color, 0, 0, *t.path_point(f), t.size)
                                     for t in clip.tracks if t.visible(f)]) for f in range(clip.num_frames)]


def frame_dataset(cfg: toy_video.ToyVideoConfig, split: str, clips: int, draw, labels: list[tuple[str, str]]):
    pixels, targets = [], []
    for clip in toy_video.make_clips(cfg, split, clips):
        for index, frame in enumerate(draw(cfg, clip)):
            target = np.zeros(len(labels), np.float32)
            for t in clip.tracks:
                if t.visible(index):
                    target[labels.index((t.color, t.shape))] = 1
            pixels.append(np.asarray(frame))
            targets.append(target)
    # The checkpoint's processor normalises with mean 0.5, std 0.5: [-1, 1].
    x = torch.tensor(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.tensor(np.stack(targets))


class Probe(torch.nn.Module):
    def __init__(self, ckpt: ToyVideoCheckpointConfig, num_labels: int):
        from transformers import CLIPVisionConfig, CLIPVisionModel

        super().__init__()
        side = ckpt.video.world.image_size
        self.tower = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=ckpt.vision_hidden, intermediate_size=ckpt.vision_hidden * 2,
            num_hidden_layers=ckpt.vision_layers, num_attention_heads=ckpt.heads, image_size=side,
            patch_size=ckpt.patch_size, projection_dim=ckpt.vision_hidden))
        self.patches_a_side = side // ckpt.patch_size
        self.head = torch.nn.Sequential(torch.nn.Linear(ckpt.vision_hidden, 128), torch.nn.GELU(),
                                        torch.nn.Linear(128, num_labels))

    def forward(self, x):
        hidden = self.tower(pixel_values=x).last_hidden_state[:, 1:]  # without the class token
        grid = hidden.reshape(len(x), self.patches_a_side, self.patches_a_side, -1).permute(0, 3, 1, 2)
        tokens = torch.nn.functional.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
        return self.head(tokens).max(dim=1).values


def run(name: str, draw, args, ckpt: ToyVideoCheckpointConfig, labels) -> dict:
    x_train, y_train = frame_dataset(ckpt.video, "sft", args.train_clips, draw, labels)
    x_test, y_test = frame_dataset(ckpt.video, "eval", args.test_clips, draw, labels)
    torch.manual_seed(args.seed)
    probe = Probe(ckpt, len(labels))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        batch = torch.randint(len(x_train), (args.batch_size,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(x_train[batch]), y_train[batch])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        named = (probe(x_test) > 0).float()
    hits = (named * y_test).sum()
    return {"drawing": name, "frames": len(x_test), "exact": (named == y_test).all(1).float().mean().item(),
            "precision": (hits / named.sum().clamp(min=1)).item(), "recall": (hits / y_test.sum()).item(),
            "seconds": time.time() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-clips", type=int, default=1500)
    parser.add_argument("--test-clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ckpt = ToyVideoCheckpointConfig()
    labels = [(color, shape) for color in ckpt.video.world.colors for shape in ckpt.video.world.shapes]
    rows = [run("gliding", gliding_frames, args, ckpt, labels),
            run("cell-to-cell", toy_video.draw_frames, args, ckpt, labels)]
    print(f"\nperception probe: {args.steps} steps of {args.batch_size} frames; held-out frames of "
          f"{args.test_clips} clips")
    print(f"{'drawing':<14}{'exact frames':>14}{'precision':>11}{'recall':>9}{'seconds':>9}")
    for row in rows:
        print(f"{row['drawing']:<14}{row['exact']:>14.3f}{row['precision']:>11.3f}{row['recall']:>9.3f}"
              f"{row['seconds']:>9.0f}")


if __name__ == "__main__":
    main()
