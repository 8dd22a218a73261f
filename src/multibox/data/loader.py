"""DataLoader construction.

Training batches carry their epoch to the workers through the sampler: the
sampler yields ``(epoch, index)`` pairs, so augmentation draws depend only on
``(seed, epoch, index)`` and workers can stay alive between epochs. Under
``torchrun`` each process takes its own shard (DistributedSampler semantics:
the shuffled order is split round-robin across ranks).
"""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import DetectionDataset
from .transforms import collate

log = logging.getLogger(__name__)


class EpochShuffleSampler(Sampler):
    """Yields ``(epoch, index)``: a permutation seeded by ``(seed, epoch)``, sharded over ranks."""

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per = self.size // self.world_size if self.drop_last else math.ceil(self.size / self.world_size)
        return per

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = len(self) * self.world_size
        if not self.drop_last and total > len(order):  # pad by wrapping, as DistributedSampler
            order += order[: total - len(order)]
        for i in order[self.rank : total : self.world_size]:
            yield (self.epoch, i)


class _EpochDataset(Dataset):
    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        sample = self.dataset.load(index)
        t = self.dataset.transform
        if t is None:
            return sample
        if hasattr(t, "set_epoch"):
            t.set_epoch(epoch)
        return t(sample, index)


class NoSingleBatches(Sampler):
    """Batches of ``batch_size`` from ``sampler``, except that a last batch of one image joins
    the batch before it (BatchNorm cannot train on one value per channel, which a batch of
    one gives on the 1x1 maps); a single image makes a batch of two copies of itself."""

    def __init__(self, sampler: Sampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __len__(self) -> int:
        n = len(self.sampler)
        return max(1, n // self.batch_size) if n % self.batch_size == 1 else math.ceil(n / self.batch_size)

    def __iter__(self):
        keys = list(self.sampler)
        batches = [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        if batches and len(batches[-1]) == 1:
            single = batches.pop()
            if batches:
                batches[-1] += single
            else:
                batches.append(single * 2)
        yield from batches


def make_loader(
    dataset: DetectionDataset,
    batch_size: int,
    train: bool,
    workers: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A loader of collated batches; ``loader.batch_sampler.sampler.set_epoch(e)`` before each
    training epoch."""
    sampler = EpochShuffleSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size)
    per_rank = len(sampler)
    batching: dict = {"batch_size": batch_size, "sampler": sampler, "drop_last": False}
    if train and per_rank >= 2 * batch_size:
        batching["drop_last"] = True  # the shuffled remainder waits for a later epoch
    elif train and per_rank % batch_size == 1:
        batching = {"batch_sampler": NoSingleBatches(sampler, batch_size)}
        log.info(
            f"{dataset.name}: {per_rank} image(s) at batch {batch_size} would leave a batch of one, which "
            "BatchNorm cannot train on: "
            + ("it joins the batch before it" if per_rank > 1 else "the image is batched with a copy of itself")
        )
    return DataLoader(
        _EpochDataset(dataset),
        **batching,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
    )
