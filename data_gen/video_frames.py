"""Frames of a clip for the `video` prompt source: which frames to keep, and decoding video files.

A clip is either a list of frame files (given one by one, or as a folder read in name order) or a video
file decoded with PyAV (`pip install av`, an optional dependency: halign[video]). Prompt records hold
paths, so a decoded clip's kept frames are written as PNG files (lossless: the frames the model sees are
the decoded ones) under `frame_dir/<record id>/`.

Sampling, in this order:
  fps         keep `fps` frames per second of video: frames at multiples of (clip rate / fps), the first
              frame always kept. Needs the clip's rate: a video file's own, or `video_fps` given for a
              folder or list of frames. Never adds frames: a clip slower than `fps` keeps them all.
  max_frames  then, if more frames remain, keep `max_frames` evenly spaced over them (the first frame
              always kept), as video MLLMs sample a clip.
The rate of the kept frames (`sampled_fps` = kept / total x clip rate, transformers' definition) is what
Qwen2.5-VL turns into seconds per temporal patch.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg"}
NO_PYAV = "reading video files needs PyAV: `pip install av` (or `pip install halign[video]`)"


def sample_indices(total: int, clip_fps: float | None = None, fps: float | None = None,
                   max_frames: int | None = None) -> list[int]:
    """Indices of the frames kept out of `total` (see the module docstring)."""
    indices = list(range(total))
    if fps:
        if not clip_fps:
            raise ValueError("fps sampling needs the clip's frame rate (video_fps for a folder or list of frames)")
        step = clip_fps / float(fps)
        if step > 1:
            indices = [int(i * step) for i in range(int((total - 1) / step) + 1)]
    if max_frames and len(indices) > int(max_frames):
        step = len(indices) / int(max_frames)
        indices = [indices[int(i * step)] for i in range(int(max_frames))]
    return indices


def sampled_fps(total: int, kept: int, clip_fps: float | None) -> float | None:
    return kept / total * clip_fps if clip_fps and total else None


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def decode_video(path: str | Path, out_dir: str | Path, fps: float | None = None,
                 max_frames: int | None = None) -> tuple[list[str], float | None]:
    """Decode `path`, keep the sampled frames as PNG files in `out_dir`; (frame paths, sampled fps).

    Raises ImportError without PyAV and ValueError for a file PyAV cannot read or with no video frames.
    """
    try:
        import av
    except ImportError:
        raise ImportError(NO_PYAV) from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            clip_fps = float(stream.average_rate) if stream.average_rate else None
            # The container's frame count can be missing or wrong, so the frames are counted by decoding;
            # clips for preference data are short, and only the kept ones are converted and written.
            total = sum(1 for _ in container.decode(stream))
        if total == 0:
            raise ValueError(f"{path}: no decodable frames")
        keep = set(sample_indices(total, clip_fps, fps, max_frames))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index in keep:
                    target = out / f"{index:06d}.png"
                    frame.to_image().save(target)
                    paths.append(str(target))
    except av.FFmpegError as err:
        raise ValueError(f"{path}: unreadable video: {err}") from None
    return paths, sampled_fps(total, len(paths), clip_fps)
