"""Distributed training (segloop.trainers.distributed): the trainers' DistributedDataParallel
wrapping on 2 CPU processes over gloo gives the gradients a single process computes for the same
global batch, for the automatic and the prompt model, and the pieces the server uses to launch
torchrun behave. The run through the real
server (torchrun, 2 ranks, one version) is in tests/test_server_e2e.py."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segloop.trainers.distributed import World, all_ranks_agree, requested_processes, torchrun_command, torchrun_world

pytestmark = pytest.mark.slow

ROI = (32, 32, 16)
LABELS = {"liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}


def _trainer(folder, kind):
    from segloop.campaign.registry import ModelRegistry
    from segloop.networks import build_network
    from segloop.networks.prompt import build_prompt_network
    from segloop.trainers.prompt import PromptTrainer
    from segloop.trainers.segmentation import SegmentationTrainer

    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    common = dict(model_dir=folder, labels=LABELS, roi_size=ROI, registry=ModelRegistry(folder, kind), device="cpu")
    if kind == "prompt":
        return PromptTrainer(network=build_prompt_network("prompt_cpu", len(LABELS)), coarse_spacing=(8, 8, 8),
                             fine_spacing=(4, 4, 4), **common)
    network = build_network("unetr_cpu", len(LABELS) + 1, ROI, dropout=0.0, target_spacing=(8.0, 8.0, 8.0))
    return SegmentationTrainer(network=network, target_spacing=(8, 8, 8), **common)


def _batch(kind):
    """Two samples, the same in every process: (network inputs, target) of each. The automatic
    model: an image and its label map; the prompt model: an image with its prompt channels, two
    label queries and their binary masks."""
    generator = torch.Generator().manual_seed(123)
    if kind == "prompt":
        from segloop.networks.prompt import PROMPT_CHANNELS

        images = torch.rand((2, 1 + PROMPT_CHANNELS, *ROI), generator=generator)
        queries = torch.tensor([[1, 3], [2, 4]])
        masks = (torch.rand((2, 2, *ROI), generator=generator) > 0.7).float()
        return [((images[i : i + 1], queries[i : i + 1]), masks[i : i + 1]) for i in range(2)]
    images = torch.rand((2, 1, *ROI), generator=generator)
    labels = torch.randint(0, len(LABELS) + 1, (2, 1, *ROI), generator=generator).float()
    return [((images[i : i + 1],), labels[i : i + 1]) for i in range(2)]


def _metric_items(ranks):
    """One-hot (pred, label) items, one per rank, whose per-label Dice differ from rank to rank."""
    generator = torch.Generator().manual_seed(7)
    items = []
    for _ in ranks:
        label = torch.randint(0, len(LABELS) + 1, (1, 8, 8, 8), generator=generator)
        pred = torch.where(torch.rand(label.shape, generator=generator) < 0.7, label, torch.zeros_like(label))
        one_hot = lambda x: torch.nn.functional.one_hot(x[0], len(LABELS) + 1).permute(3, 0, 1, 2).float()  # noqa: E731
        items.append({"pred": one_hot(pred), "label": one_hot(label)})
    return items


def _label_dice(items):
    """The per-label training Dice a run computes (``per_label_dice``: what a staged run switches on)
    over ``items`` in one epoch of an ignite engine."""
    from ignite.engine import Engine

    from segloop.trainers.handlers import per_label_dice

    engine = Engine(lambda e, batch: batch)
    for name, metric in per_label_dice(LABELS).items():
        metric.attach(engine, name)
    engine.run([items], max_epochs=1)
    return {name: float(engine.state.metrics[f"dice_{name}"]) for name in LABELS}


def _context(trainer):
    from monailabel.tasks.train.basic_train import Context

    context = Context()
    context.device, context.request = torch.device("cpu"), {}
    return context


def _rank(rank, world_size, port, folder, out, kinds):
    """One rank of the 2-process group: for each model kind, DDP's gradients of this rank's sample,
    the stop vote and the reduced training metrics; rank 0 saves them to ``out`` (kind -> record).
    Both kinds share one group: the processes start once."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        records = {}
        for kind in kinds:
            trainer = _trainer(os.path.join(folder, f"{kind}_rank{rank}"), kind)
            trainer._world = World(rank, rank, world_size)
            context = _context(trainer)
            network, _ = trainer._create_network_and_optimizer(context)
            assert isinstance(network, torch.nn.parallel.DistributedDataParallel)
            inputs, target = _batch(kind)[rank]
            loss = trainer.loss_function(context)(network(*inputs), target)
            loss.backward()  # DDP all-reduces (averages) the gradients across the ranks here
            stop = all_ranks_agree(rank == 1)  # only rank 1 is past its budget: both must stop
            dice = _label_dice([_metric_items(range(world_size))[rank]])  # each rank its own item
            grads = {n: p.grad.clone() for n, p in network.module.named_parameters() if p.grad is not None}
            records[kind] = {"grads": grads, "stop": stop, "dice": dice}
        if rank == 0:
            torch.save(records, out)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KINDS = ("segmentation", "prompt")


@pytest.fixture(scope="module")
def two_process_records(tmp_path_factory):
    """kind -> rank 0's record of the 2-process gloo group (:func:`_rank`), both kinds in one spawn."""
    folder = tmp_path_factory.mktemp("ddp")
    out = str(folder / "ddp.pt")
    mp.spawn(_rank, args=(2, _free_port(), str(folder), out, KINDS), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("kind", KINDS)
def test_two_gloo_processes_give_the_single_process_gradients_of_the_same_global_batch(two_process_records, tmp_path, kind):
    ddp = two_process_records[kind]
    assert ddp["stop"] is True  # one rank's time budget stops both, at the same epoch end
    # the training metrics are reduced across the ranks: rank 0's equal one process's over both items
    items = _metric_items(range(2))
    both, first = _label_dice(items), _label_dice(items[:1])
    assert ddp["dice"] == pytest.approx(both, abs=1e-6)
    assert any(abs(both[n] - first[n]) > 1e-3 for n in LABELS)  # rank 0's item alone differs

    # One process, the same two samples. The loss's Dice is computed over its batch, so the global
    # batch is the two samples' losses averaged (what DDP's gradient averaging computes), not one
    # batch of two.
    torch.set_num_threads(1)
    trainer = _trainer(str(tmp_path / "single"), kind)
    context = _context(trainer)
    network, _ = trainer._create_network_and_optimizer(context)
    assert not isinstance(network, torch.nn.parallel.DistributedDataParallel)
    samples = _batch(kind)
    loss_fn = trainer.loss_function(context)
    loss = sum(loss_fn(network(*inputs), target) for inputs, target in samples) / 2
    loss.backward()
    single = {n: p.grad for n, p in network.named_parameters() if p.grad is not None}
    assert set(single) == set(ddp["grads"]) and len(single) > 30
    worst = max(float((ddp["grads"][n] - g).abs().max() / (g.abs().max() + 1e-12)) for n, g in single.items())
    assert worst < 1e-4, f"largest relative gradient difference {worst:.2e}"
    # the check can fail: the gradient of one sample alone is far from the global batch's
    network.zero_grad()
    loss_fn(network(*samples[0][0]), samples[0][1]).backward()
    alone = max(float((p.grad - single[n]).abs().max() / (single[n].abs().max() + 1e-12))
                for n, p in network.named_parameters() if n in single)
    assert alone > 1e-2


def test_the_launch_command_and_the_worlds_place(monkeypatch):
    request = {"run_id": "20261206_120000", "train_procs": 2, "model": "segmentation", "device": "cpu", "local_rank": 0}
    assert requested_processes(request) == 2 and requested_processes({}) == 1
    command = torchrun_command(request)
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in command
    assert command[command.index("--nproc_per_node") + 1] == "2"
    assert command[-5:-1] == ["monailabel.interfaces.utils.app", "-m", "train", "-r"]
    assert '"run_id":"20261206_120000"' in command[-1] and '"device"' not in command[-1]  # each rank picks its device
    with pytest.raises(ValueError, match="train_rdzv"):
        torchrun_command(dict(request, train_nodes=2))
    multi = torchrun_command(dict(request, train_nodes=2, train_rdzv="node0:29400"), node_rank=1)
    assert multi[multi.index("--rdzv_endpoint") + 1] == "node0:29400" and multi[multi.index("--node_rank") + 1] == "1"
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_world() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert torchrun_world() == World(3, 1, 4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_world() is None  # torchrun with one process: an ordinary run
