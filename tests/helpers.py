"""Small test doubles shared by several test files (imported as ``helpers``; tests/ is on sys.path)."""

import subprocess
import sys

import torch
from torch import nn


class ZeroNet(nn.Module):
    """g_θ = 0 (with one parameter, for the dtype): the EnergyModel is exactly a Gaussian marginal."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.w * x.reshape(x.shape[0], -1).sum(1)


def two_process_training(rank: int, world: int, init_method: str, run_root: str, config: dict, data) -> None:
    """Body of each process of ``test_train.test_two_process_training``: under a gloo process
    group, one optimisation step (parameters saved per rank), a full run, and the same run
    interrupted after its step-3 checkpoint and resumed; the final parameters go to
    ``run_root/rank{rank}.pt``."""
    import os

    import torch

    from boltzgen.train import Trainer

    torch.distributed.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        one = Trainer(config, data, os.path.join(run_root, "one"), progress=False)
        one.train_step()
        full = Trainer(config, data, os.path.join(run_root, "full"), progress=False)
        full.fit()
        part = Trainer(config, data, os.path.join(run_root, "part"), progress=False)
        part._write_static_files()
        for _ in range(3):
            part.train_step()
        part.save()  # as after a crash right after the step-3 checkpoint
        resumed = Trainer(config, data, os.path.join(run_root, "part"), progress=False)
        resumed.fit()
        torch.save(
            {
                "one": one.model.inner.state_dict(),
                "full": full.model.inner.state_dict(),
                "resumed": resumed.model.inner.state_dict(),
                "local_batch": one.local_batch,
            },
            os.path.join(run_root, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()


def train_small_aldp_run(tmp_path, config_yaml: str):
    """24 frames of alanine dipeptide MD and a `boltzgen train` run on them with ``config_yaml``:
    (run directory, data file), both under ``tmp_path``."""
    from boltzgen.cli import main

    data = tmp_path / "aldp.h5"
    args = ["simulate", "aldp-vacuum", "-n", "24", "-o", str(data), "--replicas", "1", "--equilibration", "50"]
    assert main([*args, "--stride", "10", "--workers", "0", "--no-progress", "--seed", "2"]) == 0
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml)
    run = tmp_path / "run"
    cmd = ["train", "--data", str(data), "-o", str(run), "--config", str(config), "--system", "aldp-vacuum"]
    assert main([*cmd, "--no-progress"]) == 0
    return run, data


def run_unguarded_script(path, body: str) -> str:
    """Run ``body`` as a user script with no ``if __name__ == "__main__":`` guard (after a line
    that prints "script body ran"); check that it exits 0 and that its body ran once, not again in
    any worker process it started, and that its workers left nothing for multiprocessing's
    resource tracker to clean up (no "leaked semaphore" warning). Returns its stdout."""
    path.write_text("print('script body ran', flush=True)\n" + body)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("script body ran") == 1
    assert "leaked" not in out.stderr, out.stderr
    return out.stdout
