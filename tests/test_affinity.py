"""The windowed (tiled) affinity gives exactly what the dense affinity masked afterwards gives."""

from collections import deque

import pytest
import torch
import torch.nn.functional as F

from siammae.propagate.affinity import LabelPropagator, window_mask
from siammae.propagate.protocol import PROTOCOLS, Protocol


class DenseReference:
    """The propagation step as siammae computed it before the tiles: the (N x C*N) similarity to every
    context token, the window applied as a mask, top-k over the rest."""

    def __init__(self, p, grid, first_feats, first_labels):
        self.p, self.first = p, (first_feats, first_labels)
        self.queue = deque([self.first] * p.queue if p.pad_queue else [], maxlen=p.queue)
        self.window = window_mask(*grid, p.radius, p.window)

    def step(self, feats):
        ctx = [self.first, *self.queue]
        keys = torch.cat([f for f, _ in ctx])
        labels = torch.cat([lab for _, lab in ctx], dim=1).T
        C, N = len(ctx), feats.shape[0]
        sim = (feats @ keys.T).view(N, C, N)
        if self.window is not None:
            sim[:, 0 if self.p.window_on_first else 1 :].masked_fill_(~self.window[:, None], float("-inf"))
        vals, idx = sim.view(N, C * N).topk(min(self.p.topk, C * N), dim=1)
        weights = torch.nan_to_num(torch.softmax(vals / self.p.temperature, dim=1))
        pred = torch.einsum("nk,nkl->nl", weights, labels[idx]).T.contiguous()
        if self.queue.maxlen:
            self.queue.append((feats, pred))
        return pred


def random_tokens(n, d=32):
    return F.normalize(torch.randn(n, d), dim=-1)


def same(a, b):
    """Equal to float rounding, and the same label wins everywhere. (Bit for bit where every tile has
    enough rows; BLAS multiplies a tile of a few rows with another kernel, which rounds differently.)"""
    return torch.allclose(a, b, rtol=0, atol=1e-6) and torch.equal(a.argmax(0), b.argmax(0))


@pytest.mark.parametrize(
    "preset, grid",
    [
        ("siammae", (30, 53)),  # radius 20 disk, first frame whole; DAVIS 480p
        ("dino", (30, 52)),  # radius 12 square on every frame
        ("siammae-vip", (55, 30)),  # portrait, radius 8
    ],
)
def test_windowed_equals_dense_bit_for_bit_at_davis_sizes(preset, grid):
    torch.manual_seed(0)
    p = PROTOCOLS[preset].replace(queue=3)
    n = grid[0] * grid[1]
    first, labels = random_tokens(n), torch.softmax(torch.randn(5, n), 0)
    tiled, dense = LabelPropagator(p, grid, first, labels), DenseReference(p, grid, first, labels)
    for _ in range(5):  # the queue fills and turns over
        target = random_tokens(n)
        assert torch.equal(tiled.step(target), dense.step(target))


def test_padded_queue_small_grid():
    torch.manual_seed(3)
    grid, p = (17, 23), PROTOCOLS["crw"].replace(queue=3)  # the queue starts padded with the first frame
    n = grid[0] * grid[1]
    first, labels = random_tokens(n), torch.softmax(torch.randn(5, n), 0)
    tiled, dense = LabelPropagator(p, grid, first, labels), DenseReference(p, grid, first, labels)
    for _ in range(5):
        target = random_tokens(n)
        assert same(tiled.step(target), dense.step(target))


@pytest.mark.parametrize("tile", [1, 3, 8, 64])
def test_tile_size_does_not_change_the_result(tile):
    torch.manual_seed(1)
    grid, p = (9, 14), Protocol("t", topk=4, queue=2, radius=2.5, window="disk", window_on_first=True, temperature=0.2)
    n = grid[0] * grid[1]
    first, labels = random_tokens(n), torch.softmax(torch.randn(3, n), 0)
    tiled, dense = LabelPropagator(p, grid, first, labels, tile=tile), DenseReference(p, grid, first, labels)
    for _ in range(3):
        target = random_tokens(n)
        assert same(tiled.step(target), dense.step(target))


def test_window_smaller_than_topk_gives_zero_weight_to_missing_candidates():
    # Radius 1 on every frame: a token has at most 1 candidate per frame, fewer than top-k 5.
    torch.manual_seed(2)
    grid, p = (4, 4), Protocol("t", topk=5, queue=1, radius=1, window="disk", window_on_first=True, temperature=0.1)
    first, labels = random_tokens(16), torch.eye(16)
    out = LabelPropagator(p, grid, first, labels).step(random_tokens(16))
    # With only the first frame as context, each token can only take its own cell's label.
    assert torch.allclose(out, torch.eye(16))


def test_a_bf16_context_is_compared_in_fp32():
    """Keeping the context's features in bf16 (the extraction precision) changes nothing else: with
    features that bf16 holds exactly, the predictions equal those of an fp32 context bit for bit, and
    the queue holds bf16 tensors (half the memory)."""
    torch.manual_seed(4)
    grid, p = (30, 53), PROTOCOLS["siammae"].replace(queue=3)
    n = grid[0] * grid[1]

    def tokens():
        return random_tokens(n).bfloat16().float()

    first, labels = tokens(), torch.softmax(torch.randn(5, n), 0)
    half = LabelPropagator(p, grid, first, labels, store=torch.bfloat16)
    full = LabelPropagator(p, grid, first, labels)
    for _ in range(4):
        target = tokens()
        assert torch.equal(half.step(target), full.step(target))
    assert all(f.dtype == torch.bfloat16 for f, _ in half.context())
