"""Multi-process training: `halign train --accelerate-config single|ddp|zero2|zero3 --num-processes N`, and a
recipe's `train.accelerate_config` / `train.num_processes` (recipes/stages.py), through the same command.

The shipped configs (align/configs/*.yaml) are ordinary `accelerate` config files; a path to your own works
too. On GPUs the training command is re-run under `accelerate launch`. Without a GPU, accelerate's own
launcher runs a single process, so data parallel on CPU goes through `torch.distributed.run` with the
gloo backend (ACCELERATE_USE_CPU tells accelerate to join that process group): this is how the tests
check that 2 processes give the single-process result.

DeepSpeed ZeRO-2/3 also run on CPU (DeepSpeed's CPU accelerator, DS_ACCELERATOR=cpu; DeepSpeed builds a small
shared-memory communication op on first use): torch.distributed.run starts the processes and the config's
deepspeed section reaches accelerate through the same environment variables `accelerate launch` sets. Mixed
precision is off there (float32), whatever the config says. This is how the tests check ZeRO without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED = ("single", "ddp", "zero2", "zero3")


def config_path(name_or_path: str) -> Path:
    if name_or_path in SHIPPED:
        return CONFIG_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(f"--accelerate-config must be one of {SHIPPED} or an accelerate config file, "
                         f"got {name_or_path!r}")
    return path


def load_config(name_or_path: str) -> dict:
    config = yaml.safe_load(config_path(name_or_path).read_text())
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise ValueError(f"{name_or_path}: not an accelerate config (no distributed_type)")
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(config_name: str, num_processes: int | None, train_argv: list[str], cuda: bool | None = None):
    """(argv, extra environment) that runs `halign train <train_argv>` in `num_processes` processes (None: the
    config's own num_processes, else 1)."""
    import torch

    config = load_config(config_name)
    if num_processes is None:
        num_processes = int(config.get("num_processes") or 1)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    deepspeed = config["distributed_type"] == "DEEPSPEED"
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ValueError("DeepSpeed is not installed: pip install 'halign[deepspeed]'")
    module = [sys.executable, "-m", "halign.recipes.cli", "train", *train_argv]
    if cuda:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(config_name)),
                "--num_processes", str(num_processes), "-m", "halign.recipes.cli", "train", *train_argv]
        return argv, {}
    if not deepspeed and (config["distributed_type"] == "NO" or num_processes == 1):
        return module, {}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *module[1:]]
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # ACCELERATE_USE_CPU would make accelerate wrap the model in DDP and ignore DeepSpeed.
    return argv, {**env, **cpu_deepspeed_env(config)} if deepspeed else {**env, "ACCELERATE_USE_CPU": "true"}


def cpu_deepspeed_env(config: dict) -> dict:
    """The environment `accelerate launch` derives from a config's deepspeed section, for DeepSpeed on CPU."""
    ds = config.get("deepspeed_config", {})
    env = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "no",
           "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(ds.get("zero_stage", 2))}
    for key in ("offload_optimizer_device", "offload_param_device", "zero3_init_flag", "zero3_save_16bit_model",
                "gradient_accumulation_steps", "gradient_clipping"):
        if key in ds:
            name = {"zero3_init_flag": "ZERO3_INIT"}.get(key, key.upper())
            prefix = "ACCELERATE_" if key.startswith("gradient") else "ACCELERATE_DEEPSPEED_"
            env[prefix + name] = str(ds[key]).lower()
    return env
