"""Loading a checkpoint's processor, image-only where its video processor cannot be built.

In transformers 5.x, `Qwen2VLProcessor`, `Qwen2_5_VLProcessor`, `SmolVLMProcessor` (and other processors with
a `video_processor` attribute) cannot be built without torchvision: every concrete video processor requires
it, and the processor's constructor rejects any video processor when it is missing. halign never sends
videos through the processor: its frame-based video recipe passes frames as several images, so DPO,
sampling and evaluation only need the image path. So without torchvision, `load_processor` builds such a
processor from its public parts (tokenizer, the PIL-backend image processor) plus an
`ImageOnlyVideoProcessor` holding the checkpoint's video-processor config unchanged: images and text are
processed exactly as by `AutoProcessor`, a call with videos fails saying what to install, and
`save_pretrained` writes the original video config back, so a saved checkpoint loads its real video
processor wherever torchvision is installed. With torchvision, or for processors without a video
processor, `load_processor` is `AutoProcessor.from_pretrained`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from transformers.video_processing_utils import BaseVideoProcessor

NO_VIDEO = ("this processor was loaded image-only because torchvision is not installed; "
            "`pip install torchvision` to process videos")


class ImageOnlyVideoProcessor(BaseVideoProcessor):
    """Stands in for a checkpoint's video processor where torchvision is missing; processes no video.

    `ImageOnlyVideoProcessor(**config)` keeps `config` (the checkpoint's video-processor config, e.g. with
    `video_processor_type="Qwen2VLVideoProcessor"`) verbatim: `to_dict`, hence `save_pretrained` and the
    processor's own `processor_config.json`, return it unchanged. Its entries are also attributes, because
    processors read some of them outside video processing (SmolVLM's `apply_chat_template` reads
    `num_frames` and `fps`; Qwen's token counting reads `merge_size`).
    """

    def __init__(self, **config: Any):
        # The base class is initialised empty: the config is kept as written, not standardised, because this
        # object never resizes or normalises anything and must write back exactly what it read.
        super().__init__()
        self._original_config = copy.deepcopy(config)
        for key, value in config.items():
            setattr(self, key, copy.deepcopy(value))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._original_config)

    # __call__ goes through preprocess; fetch_videos is where apply_chat_template would load video files.
    def preprocess(self, videos, **kwargs):
        raise ImportError(NO_VIDEO)

    def fetch_videos(self, *args, **kwargs):
        raise ImportError(NO_VIDEO)


def load_processor(path: str | Path):
    """The checkpoint's processor: `AutoProcessor.from_pretrained(path)`, or image-only without torchvision
    for processors that would need it for their video processor (see the module docstring)."""
    from transformers import AutoProcessor

    cls = processor_class(path)
    if needs_image_only(cls):
        return load_image_only(path, cls)
    return AutoProcessor.from_pretrained(str(path))


def needs_image_only(cls) -> bool:
    """True where `cls` has a video processor that cannot be built here (no torchvision)."""
    from transformers.utils import is_torchvision_available

    return cls is not None and not is_torchvision_available() and "video_processor" in cls.get_attributes()


def processor_class(path: str | Path):
    """The checkpoint's processor class, resolved from its files as `AutoProcessor` does; None if it has none.

    Looked up in processor_config.json, then tokenizer_config.json (`processor_class`), then the model
    config's type in transformers' processor mapping.
    """
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.tokenization_auto import get_tokenizer_config
    from transformers.processing_utils import ProcessorMixin

    path = str(path)
    processor_dict, _ = ProcessorMixin.get_processor_dict(path)
    if "AutoProcessor" in processor_dict.get("auto_map", {}):
        return None  # remote code: only AutoProcessor (with trust_remote_code) knows how to build it
    name = processor_dict.get("processor_class") or get_tokenizer_config(path).get("processor_class")
    if name:
        return getattr(transformers, name, None)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):  # no config.json or an unknown model type: nothing to resolve
        return None
    return transformers.PROCESSOR_MAPPING.get(type(config), None)


def load_image_only(path: str | Path, cls):
    """`cls.from_pretrained(path)` with an `ImageOnlyVideoProcessor` in place of the video processor."""
    from transformers import AutoImageProcessor, AutoTokenizer

    path = str(path)
    loaders = {
        "tokenizer": AutoTokenizer.from_pretrained,
        # Without torchvision AutoImageProcessor picks the PIL backend, which gives the same numbers.
        "image_processor": AutoImageProcessor.from_pretrained,
        "video_processor": lambda p: ImageOnlyVideoProcessor(**original_video_config(p)),
    }
    attributes = cls.get_attributes()
    unknown = [a for a in attributes if a not in loaders]
    if unknown:
        raise ImportError(f"{cls.__name__} needs torchvision for its video processor, and its {unknown} cannot be "
                          f"loaded image-only; `pip install torchvision`")
    # The argument order of from_args_and_dict is the order of cls.get_attributes(), as in from_pretrained.
    args = [loaders[attribute](path) for attribute in attributes]
    processor_dict, kwargs = cls.get_processor_dict(path)
    processor = _accepting_image_only(cls).from_args_and_dict(args, processor_dict, **kwargs)
    processor.__class__ = cls  # see _accepting_image_only
    return processor


def original_video_config(path: str | Path) -> dict:
    """The checkpoint's video-processor config as written: the `video_processor` entry of
    processor_config.json, else video_preprocessor_config.json, else preprocessor_config.json (older
    checkpoints kept image and video settings in one file), in the order transformers itself reads them."""
    config, _ = BaseVideoProcessor.get_video_processor_dict(str(path))
    return config


def construct_image_only(cls, *args, **kwargs):
    """`cls(*args, **kwargs)` for a processor class whose `video_processor` is an ImageOnlyVideoProcessor."""
    processor = _accepting_image_only(cls)(*args, **kwargs)
    processor.__class__ = cls  # see _accepting_image_only
    return processor


def _accepting_image_only(cls):
    """A subclass of processor class `cls` whose constructor accepts an ImageOnlyVideoProcessor.

    ProcessorMixin.__init__ checks each part's class; for `video_processor` it looks up `VideoProcessorMixin`
    among transformers' top-level names and the registered video processors, and without torchvision neither
    exists (the mapping is a placeholder whose lookup raises AttributeError), so *no* video processor passes
    the check there. The subclass answers the check for an ImageOnlyVideoProcessor and defers to `cls` for
    every other part. It is used for construction only: the callers turn the instance back into a plain `cls`
    (same layout, nothing else overridden), so it saves, pickles and isinstance-checks as `cls` does.
    """
    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and isinstance(argument, ImageOnlyVideoProcessor):
            return ImageOnlyVideoProcessor
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})
