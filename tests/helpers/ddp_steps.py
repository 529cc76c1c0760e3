"""Run under torchrun (or plainly, as one process): a few BYOL updates in float64 on a fixed
batch, through byol_core's own training step (sharded views, SyncBatchNorm, DDP, LARS, EMA).
Rank 0 saves the final online and target weights to argv[2] (params file: argv[1])."""

import sys

import torch

from byol_core.train import distributed
from byol_core.train.augment import Augmenter
from byol_core.config import load_params
from byol_core.schema.pretrain import Schedule
from byol_core.train.step import Recipe, TrainState, build_model, build_optimizer, train_step

STEPS = 3
CPU = torch.device("cpu")


def main(params_path: str, out: str) -> None:
    params = load_params(params_path)
    world = distributed.current()
    if world.size > 1:
        world, _ = distributed.setup("cpu")
    torch.manual_seed(3)
    images = torch.randint(0, 256, (params.pretrain.batch_size, 1, 28, 28), dtype=torch.uint8)
    model = build_model(params, 1).double()
    if world.size > 1:
        model = distributed.sync_batchnorm(model, CPU)
    recipe = Recipe(Schedule(steps_per_epoch=STEPS, total_steps=STEPS, warmup_steps=0, peak_lr=0.2),
                    tau_base=0.9, precision="fp32")
    state = TrainState(model, build_optimizer(model.trainable_parameters(), params.pretrain), recipe)
    if world.size > 1:
        state.forward = distributed.wrap(model, CPU)
    views = Augmenter.for_data(params.augment, 28, torch.tensor([0.3]), torch.tensor([0.3]),
                               torch.Generator().manual_seed(5), world.shard)

    def double_views(batch):  # the step's own views, in the model's float64
        return tuple(view.double() for view in views(batch))

    local = len(images) // world.size
    mine = images[world.rank * local:(world.rank + 1) * local]
    for _ in range(STEPS):
        train_step(state, mine, double_views)
    distributed.check_in_step(model)
    if world.is_main:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
