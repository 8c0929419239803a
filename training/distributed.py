"""Data-parallel training under torchrun (gloo, CPU):

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 \\
        -m training.distributed --data DIR --out DIR

Every rank prepares the same data, starts from rank 0's weights, walks the same batch order,
trains on its slice of each batch and averages gradients with all-reduce (trainer.py), so all
ranks end with identical weights. Rank 0 exports the serving artifacts; each rank also saves
its final state_dict as ``rank<r>.pt`` so the equality can be checked.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> int:
    from sassflow.settings import get_settings
    from training.export import export_artifacts
    from training.pipeline import load_data, new_model
    from training.trainer import History, finetune, pretrain

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder (MovieLens format or events.parquet)")
    p.add_argument("--out", required=True)
    p.add_argument("--pretrain-epochs", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    args = p.parse_args(argv)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    settings = get_settings()
    over = {k: v for k, v in (("pretrain_epochs", args.pretrain_epochs), ("finetune_epochs", args.finetune_epochs),
                              ("batch_size", args.batch_size)) if v is not None}
    data = load_data(settings, args.data)
    model, cfg = new_model(settings, data, **over)
    hist = History()
    pretrain(model, data, cfg, hist)
    finetune(model, data, cfg, hist)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    if rank == 0:
        export_artifacts(model, out / "model", data)
        (out / "history.json").write_text(json.dumps({"world": world, "seconds": hist.seconds,
                                                      "samples": hist.samples}))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
