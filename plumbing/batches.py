"""Which images each training step reads, and how they reach the device.

    batch_indices  the global batch of step s is a function of (seed, s) alone: epoch e is one
                   permutation drawn from (seed, e), so a resumed run reads the batches of the
                   uninterrupted one
    Prefetcher     reads the next batches on a thread while the device computes (pinned memory on
                   CUDA, so the copy overlaps with compute); each process takes its rank's slice
    Passes         the whole training set as batches, for a prior's fit: every iteration is a new
                   pass, so a fit may read the data as often as it needs (k-means, EM, the mapper)
"""
from __future__ import annotations

import functools
import math
import queue
import threading

import numpy as np
import torch


@functools.lru_cache(maxsize=2)
def epoch_order(dataset_size: int, seed: int, epoch: int) -> np.ndarray:
    # cached: permuting 1.28M indices every step would cost ~20 ms
    return np.random.default_rng([seed, epoch]).permutation(dataset_size)


def batch_indices(step: int, dataset_size: int, batch_size: int, seed: int) -> np.ndarray:
    """The global batch of step `step`: epoch e is one permutation drawn from (seed, e)."""
    per_epoch = dataset_size // batch_size
    if per_epoch < 1:
        raise ValueError(f"--batch-size {batch_size} is larger than the dataset ({dataset_size} images)")
    epoch, position = divmod(step, per_epoch)
    return epoch_order(dataset_size, seed, epoch)[position * batch_size:(position + 1) * batch_size]


class Prefetcher:
    """Reads the batches of steps start, start+1, ... on a thread, ahead of the GPU.

    Each process takes its slice rank::world of the global batch. Pinned memory lets the
    copy to the GPU overlap with compute."""

    def __init__(self, dataset, num_images: int, start: int, batch_size: int, seed: int, rank: int, world: int,
                 pin: bool):
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.stop = threading.Event()
        self.reading = dataset, num_images, batch_size, seed, rank, world, pin
        self.thread = threading.Thread(target=self._work, args=(start,), daemon=True)
        self.thread.start()

    def _work(self, step: int) -> None:
        dataset, num_images, batch_size, seed, rank, world, pin = self.reading
        while not self.stop.is_set():
            try:
                indices = batch_indices(step, num_images, batch_size, seed)[rank::world]
                images, cond = dataset.get(indices)
                item = (images.pin_memory(), cond.pin_memory()) if pin else (images, cond)
            except Exception as err:  # hand the error to the training loop instead of dying silently
                item = err
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            step += 1

    def close(self) -> None:
        """Stop the thread and wait for it: a thread still inside the data path while the
        interpreter shuts down can abort the process ("terminate called ...", exit 134)."""
        self.stop.set()
        self.thread.join()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.queue.get()
        if isinstance(item, Exception):
            raise item
        return item


class Passes:
    """The training images as (uint8 images, cond) batches on `device`; every iteration is a new
    pass, so a prior's fit can read the data as often as it needs (k-means, the mapper)."""

    def __init__(self, dataset, num_images: int, device: torch.device, batch_size: int = 1024):
        self.dataset, self.num_images, self.device, self.batch_size = dataset, num_images, device, batch_size

    def __len__(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def __iter__(self):
        for start in range(0, self.num_images, self.batch_size):
            images, cond = self.dataset.get(np.arange(start, min(start + self.batch_size, self.num_images)))
            yield images.to(self.device), cond.to(self.device)  # the fit's float64 work runs on the GPU
