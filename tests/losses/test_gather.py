"""Two or three gloo processes equal one process on the concatenated batch (losses and gradients).

Each rank holds its own rows; the contrastive loss gathers keys with gradients, the depth loss
sums its valid-cell count over ranks. The rule checked: the ranks' losses sum to the
single-process loss, and every rank's input gradients equal the single-process gradients of
the same rows. The whole `HybridViewLoss` too, with its collectives counted: one exchange of
all the terms' row counts and the two key gathers per forward, the two reduce-scatters per backward.
"""

import contextlib
import os
from dataclasses import fields

import pytest
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from hvdistill.config import GeometryConfig, LossConfig
from hvdistill.loss_inputs import LossInputs, pair_superpixel_ids
from hvdistill.losses import HybridViewLoss
from hvdistill.losses.depth import depth_loss
from hvdistill.losses.infonce import contrast
from tests.helpers.gloo import fork_ranks, free_port, init_gloo

TAU = 0.07
LAYOUTS = {  # anchors per rank (unequal; one rank with none) and depth images per rank
    "two ranks": ([5, 9], [2, 1]),
    "a rank without anchors": ([5, 0, 9], [2, 1, 1]),
}
DIM, BINS, GRID = 16, 8, (4, 5)
VARIANTS = [(0, False), (4, False), (0, True), (4, True)]  # (tile_size, with queue)
# the whole loss: per rank 2 samples with one image each, 16 depth bins over [1, 9), an 8 x 8 BEV grid
N_IMG, C, H, W, BEV, PAIRS, ANCHORS = 2, 8, 16, 24, 8, 60, 12
GEOMETRY = GeometryConfig(depth_min=1.0, depth_max=9.0, depth_step=0.5, bev_size=BEV)
COLLECTIVES = ("all_gather", "all_gather_single", "all_reduce", "all_to_all_single", "reduce_scatter_single")
LEAVES = ("pair_point_features", "image_features", "depth_logits", "lidar_bev_features", "image_bev")


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


def _rank_inputs(rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s loss inputs; superpixel ids rise with the rank, so ranks concatenate in order."""
    g = torch.Generator().manual_seed(rank)
    superpixels = torch.randint(0, 5, (N_IMG, H, W), generator=g) + 10 * torch.arange(N_IMG)[:, None, None]
    return {
        "superpixels": superpixels + 100 * rank,  # (N_IMG, H, W)
        "pair_image": torch.randint(0, N_IMG, (PAIRS,), generator=g),  # (Q,)
        "pair_uv": 1.0 + torch.rand(PAIRS, 2, generator=g) * torch.tensor([W - 2.0, H - 2.0]),
        "pair_depth": 1.0 + 7.0 * torch.rand(PAIRS, generator=g),
        "pair_point_features": F.normalize(torch.randn(PAIRS, C, generator=g), dim=1),
        "image_features": F.normalize(torch.randn(N_IMG, C, H, W, generator=g), dim=1),
        "depth_logits": torch.randn(N_IMG, 16, H // 4, W // 4, generator=g),
        "lidar_bev_features": F.normalize(torch.randn(ANCHORS, C, generator=g), dim=1),
        "lidar_bev_indices": torch.randperm(N_IMG * BEV * BEV, generator=g)[:ANCHORS],  # (K,) flat
        "image_bev": F.normalize(torch.randn(N_IMG, C, BEV, BEV, generator=g), dim=1),
    }


def _loss_inputs(ranks: list[int]) -> LossInputs:
    """The inputs of `ranks` concatenated (image, sample and cell indices shifted), as leaves."""
    parts = [_rank_inputs(r) for r in ranks]
    joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    shift = torch.arange(len(ranks)).repeat_interleave(PAIRS)  # (Q,) position of each pair's rank
    joined["pair_image"] += N_IMG * shift
    joined["lidar_bev_indices"] += N_IMG * BEV * BEV * torch.arange(len(ranks)).repeat_interleave(ANCHORS)
    for k in LEAVES:
        joined[k].requires_grad_()
    sp = pair_superpixel_ids(joined["superpixels"], joined["pair_image"], joined["pair_uv"])
    names = {f.name for f in fields(LossInputs)}
    return LossInputs(pair_superpixel=sp, **{k: v for k, v in joined.items() if k in names})


@contextlib.contextmanager
def _counted(calls: list[str]):
    """Record the name of every torch.distributed collective called inside."""
    originals = {name: getattr(tdist, name) for name in COLLECTIVES}

    def counting(name):
        return lambda *a, **kw: (calls.append(name), originals[name](*a, **kw))[1]

    for name in COLLECTIVES:
        setattr(tdist, name, counting(name))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(tdist, name, fn)


def _total_loss(inputs: LossInputs) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The loss terms, input gradients and the collectives of forward and of backward."""
    loss = HybridViewLoss(LossConfig(tile_size=4), GEOMETRY, feature_dim=C)
    with _counted([]) as forward:
        terms = loss(inputs, epoch=0)
    with _counted([]) as backward:
        terms.total.backward()
    out = {k: getattr(terms, k).detach() for k in ("total", "ipv", "depth", "bev")}
    return {**out, **{f"grad_{k}": getattr(inputs, k).grad for k in LEAVES}}, forward, backward


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
    total, forward, backward = _total_loss(_loss_inputs([rank]))
    assert forward == ["all_gather_single", "all_gather", "all_gather"], forward  # counts, IPV keys, BEV keys
    assert backward == ["all_to_all_single"] * 2, backward  # the two gathers' reduce-scatters
    out.update({f"hybrid_{k}": v for k, v in total.items()})
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    tdist.destroy_process_group()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ranks_equal_one_process(tmp_path, layout):
    ROWS, IMAGES = LAYOUTS[layout]
    world = len(ROWS)
    args = (world, free_port(), str(tmp_path), ROWS, IMAGES)
    fork_ranks(_worker, world, args, timeout=120)
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
    single = _total_loss(_loss_inputs(list(range(world))))[0]
    for k in ("total", "ipv", "depth", "bev"):
        torch.testing.assert_close(sum(o[f"hybrid_{k}"] for o in outs), single[k], atol=1e-5, rtol=1e-5)
    for k in LEAVES:
        got = torch.cat([o[f"hybrid_grad_{k}"] for o in outs])
        torch.testing.assert_close(got, single[f"grad_{k}"], atol=1e-6, rtol=1e-5, msg=k)
