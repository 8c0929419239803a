"""Two-process data-parallel training with torchrun (gloo): both ranks end identical."""
import os
import subprocess
import sys

import torch


def test_torchrun_two_processes_identical_weights(syn_events, tmp_path):
    data = tmp_path / "set"
    data.mkdir()
    syn_events.head(30_000).to_parquet(data / "events.parquet", index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SASSFLOW_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "training.distributed", "--data", str(data), "--out", str(tmp_path / "out"),
           "--pretrain-epochs", "1", "--finetune-epochs", "1", "--batch-size", "256"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "out" / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "out" / "rank1.pt", weights_only=True)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "out" / "model" / "model.pt").exists()
