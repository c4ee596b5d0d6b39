import os
from pathlib import Path

import pytest

from shared_data import PARITY_SKIP

REPO = Path(__file__).resolve().parents[1]


def pytest_terminal_summary(terminalreporter):
    """A banner under the summary when reference-parity tests were skipped: a green run that never compared
    the scorers with the published reference outputs should not look like one that did."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if PARITY_SKIP in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.section("reference parity NOT checked", sep="!", red=True, bold=True)
        for report in skipped:
            terminalreporter.write_line(f"{report.nodeid}: {report.longrepr[-1]}", red=True)


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


@pytest.fixture(scope="session")
def pairs_dataset(tmp_path_factory):
    """8 toy-world pairs: chosen lists the true objects, rejected adds an absent star."""
    from halign.data_gen import toy_world
    from halign.data_gen.pairs import to_dataset

    out = tmp_path_factory.mktemp("pairs")
    cfg = toy_world.ToyWorldConfig()
    rows = []
    for i, rec in enumerate(toy_world.write_prompts(cfg, "dpo", 8, out / "world")):
        objects = [f"a {o['color']} {o['shape']}" for o in rec["ground_truth"]]
        # Prompts of different lengths (caption prompt, or caption prompt + a POPE question), so batches are
        # left-padded, as real data is.
        question = rec["question"] if i % 2 == 0 else f"{rec['question']} {rec['pope'][0]['question']}"
        rows.append({"image_paths": rec["images"], "prompt": [{"role": "user", "content": question}],
                     "chosen": [{"role": "assistant", "content": ", ".join(objects) + "."}],
                     "rejected": [{"role": "assistant", "content": ", ".join(objects) + " and a red star."}],
                     "chosen_score": 1.0, "rejected_score": 0.0, "judge": "test", "prompt_id": rec["id"]})
    to_dataset(rows).save_to_disk(str(out / "dataset"))
    return out / "dataset"
