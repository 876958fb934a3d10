"""One step of label propagation: the context queue, the affinity inside the local window, top-k.

For a target frame's tokens (N, D) and the context (the first frame and the last ``queue`` predicted
frames, each with features (N, D) and soft labels (L, N)), each target token takes the cosine
similarity / temperature with the context tokens inside its window, the top-k of them over all
context frames jointly, softmax weights renormalised over the k, and the weighted sum of their soft
labels.

The affinity is computed only where it can matter: the target grid is cut into tiles, and a tile's
tokens are compared with the context tokens inside the rectangle its windows can reach (the tile
grown by the radius), the exact window (disk or square) masking the rest of the rectangle. The
context frames are visited one at a time with a running top-k, so what is held at once is one tile
against one frame's rectangle (tile x rectangle), never (N x C*N), nor a stacked copy of the queue.
This gives the same top-k, weights and labels as the dense similarity masked afterwards (the tests
compare both in fp32: bit for bit on DAVIS-sized grids; on tiny grids BLAS may round a tile of a
few rows differently, by 1 ulp; an exact tie between candidates with different labels may be broken
the other way). With a window much smaller than the grid it also skips most of the multiplications
(DINO's radius 12 on a 30 x 52 grid: about half).
"""

from __future__ import annotations

import math
from collections import deque
from typing import List, Optional, Tuple

import torch

TILE = 16  # target tokens per tile side: a (16 x 16) tile with a radius-12 window compares 256 tokens
# with at most a (40 x 40) rectangle per context frame. 16 was the fastest on DAVIS grids
# (docs/benchmarks.md); smaller tiles copy more rectangles.


def in_window(dy: torch.Tensor, dx: torch.Tensor, radius: float, shape: str) -> torch.Tensor:
    """True where a token offset (dy, dx) lies inside the window: a disk dy^2 + dx^2 < r^2 (CRW) or a
    square |dy|, |dx| <= r (DINO)."""
    if shape == "disk":
        return (dy * dy + dx * dx).float() < radius * radius
    return (dy.abs() <= radius) & (dx.abs() <= radius)


def window_mask(h: int, w: int, radius: float, shape: str, device=None) -> Optional[torch.Tensor]:
    """(N, N) bool over the whole grid, True where context token j is inside target token i's window;
    None = no window. (The dense form: the tiles below use the same rule on their rectangles.)"""
    if radius <= 0:
        return None
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return in_window(ys[:, None] - ys[None, :], xs[:, None] - xs[None, :], radius, shape)


class Tile:
    """Target tokens [y0:y1, x0:x1] of the grid, the context rectangle [ry0:ry1, rx0:rx1] their windows
    reach, and where the window leaves the rectangle out."""

    def __init__(self, rows: slice, cols: slice, grid: Tuple[int, int], radius: float, shape: str, device):
        h, w = grid
        self.rows, self.cols = rows, cols
        reach = math.floor(radius) if radius > 0 else max(h, w)  # the farthest offset a window holds
        self.rect_rows = slice(max(0, rows.start - reach), min(h, rows.stop + reach))
        self.rect_cols = slice(max(0, cols.start - reach), min(w, cols.stop + reach))
        self.outside = None  # (tile tokens, rectangle tokens) bool, True outside the window; None: no window
        if radius > 0:
            ty, tx = _coords(rows, cols, device)
            ry, rx = _coords(self.rect_rows, self.rect_cols, device)
            self.outside = ~in_window(ty[:, None] - ry[None, :], tx[:, None] - rx[None, :], radius, shape)


def _coords(rows: slice, cols: slice, device):
    ys, xs = torch.meshgrid(
        torch.arange(rows.start, rows.stop, device=device),
        torch.arange(cols.start, cols.stop, device=device),
        indexing="ij",
    )
    return ys.reshape(-1), xs.reshape(-1)


def tiles(grid: Tuple[int, int], radius: float, shape: str, device=None, size: int = TILE) -> List[Tile]:
    h, w = grid
    return [
        Tile(slice(y, min(h, y + size)), slice(x, min(w, x + size)), grid, radius, shape, device)
        for y in range(0, h, size)
        for x in range(0, w, size)
    ]


class LabelPropagator:
    """The context (first frame + FIFO queue of soft labels) and one propagation step per frame.

    ``protocol`` needs ``topk``, ``queue``, ``radius``, ``window``, ``window_on_first``, ``temperature``
    and ``pad_queue`` (a :class:`siammae.propagate.Protocol`). ``store`` is the number format the
    context's features are kept in (the extraction precision: bf16 halves the queue); every
    similarity is computed in fp32 all the same."""

    def __init__(
        self,
        protocol,
        grid: Tuple[int, int],
        first_feats: torch.Tensor,
        first_labels: torch.Tensor,
        tile: int = TILE,
        store: torch.dtype = torch.float32,
    ):
        self.p = protocol
        self.grid = grid
        self.store = store
        # Copies: a row of a batch of features would keep the whole batch alive in the queue.
        self.first = (first_feats.to(store, copy=True), first_labels.to(first_feats.device).float())
        self.queue = deque(maxlen=protocol.queue)
        if protocol.pad_queue:
            self.queue.extend([self.first] * protocol.queue)
        self.tiles = tiles(grid, protocol.radius, protocol.window, first_feats.device, tile)

    def context(self):
        return [self.first, *self.queue]

    @torch.inference_mode()
    def step(self, feats: torch.Tensor) -> torch.Tensor:
        """Target tokens (N, D) -> soft labels (L, N), fp32; the result joins the queue."""
        feats = feats.float()
        h, w = self.grid
        # Frames [split:] are restricted to the window; frame 0 is whole unless the window applies to it.
        split = 0 if self.p.window_on_first or self.p.radius <= 0 else 1
        context = [(f.view(h, w, -1), lab.T.view(h, w, -1), c >= split) for c, (f, lab) in enumerate(self.context())]
        queries = feats.view(h, w, -1)
        out = torch.empty(h, w, context[0][1].shape[-1], device=feats.device)
        for tile in self.tiles:
            q = queries[tile.rows, tile.cols].reshape(-1, feats.shape[-1])  # (T, D)
            best = None
            for keys, labels, windowed in context:
                region = (tile.rect_rows, tile.rect_cols) if windowed else (slice(None), slice(None))
                sim = q @ keys[region].reshape(-1, keys.shape[-1]).float().T  # (T, R); fp32 keys: no copy
                if windowed and tile.outside is not None:
                    sim.masked_fill_(tile.outside, float("-inf"))
                best = self._keep_topk(best, sim, labels[region].reshape(-1, labels.shape[-1]))
            vals, labs = best
            weights = torch.nan_to_num(torch.softmax(vals / self.p.temperature, dim=1))  # all -inf -> 0
            rows, cols = tile.rows.stop - tile.rows.start, tile.cols.stop - tile.cols.start
            out[tile.rows, tile.cols] = torch.einsum("nk,nkl->nl", weights, labs).view(rows, cols, -1)
        pred = out.view(h * w, -1).T.contiguous()
        if self.queue.maxlen:
            self.queue.append((feats.to(self.store, copy=True), pred))
        return pred

    def _keep_topk(self, best, sim: torch.Tensor, labels: torch.Tensor):
        """The running top-k over the context frames seen so far: best = (values (T, k), their labels
        (T, k, L)) or None; sim (T, R) and labels (R, L) of one more frame's candidates. The top-k of
        the union is the top-k of the kept k and the new candidates, so one frame's similarity is all
        that is ever held (not the (T x C*R) of all frames), and the values come out sorted as a single
        top-k over everything would sort them."""
        kept = 0 if best is None else best[0].shape[1]
        candidates = sim if best is None else torch.cat([best[0], sim], 1)
        vals, idx = candidates.topk(min(self.p.topk, candidates.shape[1]), dim=1)
        new = labels[(idx - kept).clamp(min=0)]  # (T, k, L)
        if best is None:
            return vals, new
        old = best[1].gather(1, idx.clamp(max=kept - 1)[..., None].expand(-1, -1, labels.shape[-1]))
        return vals, torch.where((idx < kept)[..., None], old, new)
