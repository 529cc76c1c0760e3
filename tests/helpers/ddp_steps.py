"""Run under torchrun (or plainly, as one process): a few BYOL updates in float64 on a fixed
batch, the way byol_core.train does them (sharded views, SyncBatchNorm, DDP, LARS, EMA).
Rank 0 saves the final online and target weights to argv[2] (params file: argv[1])."""

import sys

import torch

from byol_core import distributed
from byol_core.augment import byol_views, make_view
from byol_core.config import load_params
from byol_core.train import build_model, build_optimizer

STEPS = 3


def main(params_path: str, out: str) -> None:
    params = load_params(params_path)
    world = distributed.current()
    if world.size > 1:
        world, device = distributed.setup("cpu")
    torch.manual_seed(3)
    images = torch.randint(0, 256, (params.pretrain.batch_size, 1, 28, 28), dtype=torch.uint8)
    mean, std = torch.tensor([0.3]), torch.tensor([0.3])
    model = build_model(params, 1).double()
    if world.size > 1:
        model = distributed.sync_batchnorm(model, torch.device("cpu"))
    forward = distributed.wrap(model, torch.device("cpu")) if world.size > 1 else model
    optimizer = build_optimizer(model, params)
    gen = torch.Generator().manual_seed(5)
    local = len(images) // world.size
    mine = images[world.rank * local:(world.rank + 1) * local]
    for _ in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = 0.2
        view1, view2 = (make_view(mine, spec, 28, mean, std, gen, world.shard).double()
                        for spec in byol_views(params.augment, 28))
        loss, _ = forward(view1, view2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(0.9)
    distributed.check_in_step(model)
    if world.is_main:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
