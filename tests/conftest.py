import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never touch the user's cache or any hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def halign_cache(tmp_path_factory):
    """A private cache folder for the whole test session."""
    path = tmp_path_factory.mktemp("halign_cache")
    old = os.environ.get("HALIGN_CACHE")
    os.environ["HALIGN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HALIGN_CACHE", None)
    else:
        os.environ["HALIGN_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_ckpt_config():
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig
    from halign.recipes.demo import QUICK_CHECKPOINT

    return ToyCheckpointConfig(**QUICK_CHECKPOINT)


@pytest.fixture(scope="session")
def tiny_checkpoint(halign_cache, tiny_ckpt_config):
    """A briefly trained toy checkpoint (seconds to build): real format, meaningless quality."""
    from halign.data_gen.toy_checkpoint import get_toy_checkpoint

    return get_toy_checkpoint(tiny_ckpt_config, progress=False, log=lambda *_: None)
