"""Two or three gloo processes equal one process on the concatenated batch (losses and gradients).

Each rank holds its own rows; the contrastive loss gathers keys with gradients, the depth loss
sums its valid-cell count over ranks. The rule checked: the ranks' losses sum to the
single-process loss, and every rank's input gradients equal the single-process gradients of
the same rows.
"""

import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hvdistill.losses.depth import depth_loss
from hvdistill.losses.infonce import contrast
from tests.helpers.gloo import free_port, init_gloo

TAU = 0.07
LAYOUTS = {  # anchors per rank (unequal; one rank with none) and depth images per rank
    "two ranks": ([5, 9], [2, 1]),
    "a rank without anchors": ([5, 0, 9], [2, 1, 1]),
}
DIM, BINS, GRID = 16, 8, (4, 5)
VARIANTS = [(0, False), (4, False), (0, True), (4, True)]  # (tile_size, with queue)


def _data(ROWS, IMAGES):
    g = torch.Generator().manual_seed(0)
    n = sum(ROWS)
    anchors = F.normalize(torch.randn(n, DIM, generator=g), dim=1)
    keys = F.normalize(torch.randn(n, DIM, generator=g), dim=1)
    queue = F.normalize(torch.randn(6, DIM, generator=g), dim=1)
    logits = torch.randn(sum(IMAGES), BINS, *GRID, generator=g)
    targets = 1.0 + 4.0 * torch.rand(sum(IMAGES), *GRID, generator=g)  # bins over [1, 5)
    targets[torch.rand(targets.shape, generator=g) < 0.4] = 0.0  # cells without depth
    return anchors, keys, queue, logits, targets


def _depth(logits, targets):
    return depth_loss(logits, targets, 1.0, 5.0, 0.5).loss


def _contrast_grads(anchors, keys, tile, queue, gather=True):
    q, k = anchors.clone().requires_grad_(), keys.clone().requires_grad_()
    loss = contrast(q, k, TAU, tile, gather, queue).loss
    loss.backward()
    return loss.detach(), q.grad, k.grad


def _worker(rank: int, world: int, port: int, out_dir: str, ROWS: list[int], IMAGES: list[int]) -> None:
    init_gloo(rank, world, port)
    anchors, keys, queue, logits, targets = _data(ROWS, IMAGES)
    rows = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
    images = slice(sum(IMAGES[:rank]), sum(IMAGES[: rank + 1]))
    out = {}
    for tile, with_queue in VARIANTS:
        loss, gq, gk = _contrast_grads(anchors[rows], keys[rows], tile, queue if with_queue else None)
        out.update(
            {f"loss{tile}{with_queue}": loss, f"gq{tile}{with_queue}": gq, f"gk{tile}{with_queue}": gk}
        )
    out["local"] = _contrast_grads(anchors[rows], keys[rows], 4, None, gather=False)[0]
    lg = logits[images].clone().requires_grad_()
    d = _depth(lg, targets[images])
    d.backward()
    out.update({"depth": d.detach(), "gdepth": lg.grad})
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    tdist.destroy_process_group()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ranks_equal_one_process(tmp_path, layout):
    ROWS, IMAGES = LAYOUTS[layout]
    world = len(ROWS)
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path), ROWS, IMAGES), nprocs=world, join=True)
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    anchors, keys, queue, logits, targets = _data(ROWS, IMAGES)
    for tile, with_queue in VARIANTS:
        tag = f"{tile}{with_queue}"
        loss, gq, gk = _contrast_grads(anchors, keys, tile, queue if with_queue else None)
        torch.testing.assert_close(sum(o[f"loss{tag}"] for o in outs), loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.cat([o[f"gq{tag}"] for o in outs]), gq, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.cat([o[f"gk{tag}"] for o in outs]), gk, atol=1e-6, rtol=1e-5)
    # Without gathering each rank contrasts its own rows, still normalised by the global count.
    local = sum(
        F.cross_entropy(anchors[s] @ keys[s].t() / TAU, torch.arange(s.stop - s.start), reduction="sum")
        for s in (slice(sum(ROWS[:r]), sum(ROWS[: r + 1])) for r in range(world))
    ) / sum(ROWS)
    torch.testing.assert_close(sum(o["local"] for o in outs), local, atol=1e-5, rtol=1e-5)
    lg = logits.clone().requires_grad_()
    single = _depth(lg, targets)
    single.backward()
    torch.testing.assert_close(sum(o["depth"] for o in outs), single.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([o["gdepth"] for o in outs]), lg.grad, atol=1e-7, rtol=1e-5)
