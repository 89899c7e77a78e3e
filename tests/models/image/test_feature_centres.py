"""Feature cell j of the teacher sits at pixel stride * j + centre: measured on the network, then
used identically by the IPV upsampling, the frustum and the depth targets.

The receptive-field centre is measured, not assumed: the gradient of one output cell of the
actual backbone with respect to its input is exactly zero outside the cell's receptive field,
so the midpoint of its support is the centre. `feature_grid` (the analytic composition over the
backbone's modules) must agree with it, and must follow a backbone whose stem is shifted.
A ViT's attention makes every token depend on every pixel, so its token is measured with the
blocks' layer scales at zero (the token is then its own patch's embedding: support exactly
[14 j, 14 j + 13], centre 14 j + 6.5), and with the blocks on, the gradient still peaks on that
patch. ResNets: cell j at 4 j; ViT/14: at 14 j + 6.5, on a grid of the cells centred in the crop.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvdistill.geometry.frustum import RESNET_CELL_CENTRE, make_frustum, teacher_feature_grid
from hvdistill.losses.depth import depth_targets
from hvdistill.models.image.resnet import dilation_for_output_stride, resnet18, resnet50
from hvdistill.models.image.teacher import ImageTeacher, feature_grid, upsample_cells
from hvdistill.models.image.vit import VisionTransformer, VitLayout, build_vit

WIDTH = 448  # wider than the ~430 px receptive field of the stride-4 ResNets, so it is never clipped


def measured_centre(backbone: nn.Module, stride: int, axis: int, width: int = WIDTH) -> tuple[int, float]:
    """(cell j, midpoint of the input-gradient support of cell j) along `axis` (-1 width, -2 height)."""
    torch.manual_seed(0)
    shape = [2, 3, 8, 8]
    shape[axis] = width
    x = torch.randn(*shape, requires_grad=True)  # (2, 3, H, W)
    feats = backbone.features(x)  # (2, C, H / s, W / s)
    j = width // stride // 2
    cell = feats.select(axis, j).flatten(2)[..., 0]  # (2, C): cell j along `axis`, 0 across
    (
        cell * torch.randn(cell.shape[-1])
    ).sum().backward()  # not a plain sum: a LayerNorm's output sums to a constant
    reduce = [d for d in range(4) if d != axis % 4]
    support = torch.nonzero(x.grad.abs().sum(dim=reduce)).flatten()  # (n,) input pixels that matter
    first, last = int(support.min()), int(support.max())
    assert 0 < first and last < width - 1, "receptive field clipped: widen the input"
    return j, (first + last) / 2


def frozen(backbone: nn.Module) -> nn.Module:
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval()


@pytest.mark.parametrize(
    "arch,stride,axis,width",
    [(resnet18, 4, -1, WIDTH), (resnet18, 4, -2, WIDTH), (resnet18, 8, -1, 640)],
    ids=["resnet18-s4-width", "resnet18-s4-height", "resnet18-s8-width"],
)
def test_receptive_field_centre_of_cell_j_is_stride_times_j(arch, stride, axis, width):
    backbone = frozen(arch(dilation_for_output_stride(stride)))
    grid = feature_grid(backbone)
    assert grid == (stride, RESNET_CELL_CENTRE)
    j, centre = measured_centre(backbone, stride, axis, width)
    assert centre == stride * j + grid.centre  # 4j, not the 4j + 1.5 of a 4 x 4 block's middle


@pytest.mark.slow
def test_receptive_field_centre_of_the_paper_resnet50():
    backbone = frozen(resnet50(dilation_for_output_stride(4)))
    j, centre = measured_centre(backbone, 4, -1)
    assert feature_grid(backbone) == (4, 0.0) and centre == 4 * j


def test_a_shifted_stem_is_measured_and_derived_alike():
    """The measurement can see an offset: without the max-pool's padding cells move 2 px right."""
    backbone = frozen(resnet18(dilation_for_output_stride(4)))
    backbone.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
    j, centre = measured_centre(backbone, 4, -1)
    assert feature_grid(backbone) == (4, 2.0) and centre == 4 * j + 2.0


@pytest.mark.parametrize("axis", [-1, -2], ids=["width", "height"])
def test_vit_token_j_embeds_pixels_14j_to_14j_plus_13(axis):
    torch.manual_seed(0)
    vit = frozen(VisionTransformer(VitLayout(32, 2, 2), layer_scale_init=0.0))  # blocks add nothing
    assert feature_grid(vit) == (14, 6.5) == teacher_feature_grid("vit_small_patch14", 4)
    j, centre = measured_centre(vit, 14, axis, width=14 * 9)
    assert centre == 14 * j + 6.5  # support [14 j, 14 j + 13]


def test_vit_token_j_depends_most_on_its_own_patch():
    torch.manual_seed(0)
    vit = frozen(build_vit("vit_tiny_patch14"))  # blocks on: every pixel matters a little
    x = torch.randn(2, 3, 14, 14 * 9, requires_grad=True)
    vit.features(x)[..., 0, 4].sum().backward()  # token 4 of the single row
    per_patch = x.grad.abs().sum(dim=(0, 1, 2)).reshape(9, 14).sum(1)  # (9,)
    assert (per_patch > 0).all() and int(per_patch.argmax()) == 4
    assert per_patch[4] > 10 * per_patch[torch.arange(9) != 4].max()


@pytest.mark.parametrize("size", [(42, 70), (36, 64), (49, 77)], ids=["whole", "short", "long"])
def test_upsample_puts_vit_cell_j_at_pixel_14j_plus_6_5(size):
    """A 3 x 5 cell map on crops whose last cell's patch is whole, cut short or followed by pixels."""
    s, c, hf, wf = 14, 6.5, 3, 5
    head = torch.randn(2, 6, hf, wf, dtype=torch.float64)
    up = upsample_cells(head, s, c, size)
    assert up.shape == (2, 6, *size)
    pos_v = ((torch.arange(size[0], dtype=torch.float64) - c) / s).clamp(0, hf - 1)
    pos_u = ((torch.arange(size[1], dtype=torch.float64) - c) / s).clamp(0, wf - 1)

    def weights(pos, n):  # (P, n) linear interpolation matrix
        return torch.clamp(1 - (pos[:, None] - torch.arange(n, dtype=torch.float64)).abs(), min=0)

    expected = torch.einsum("ncij,yi,xj->ncyx", head, weights(pos_v, hf), weights(pos_u, wf))
    torch.testing.assert_close(up, expected)


def test_vit_teacher_cells_frustum_and_depth_targets_agree():
    """56 x 100 crop: 4 x 8 patches after padding; the 8th column's centre (104.5) is in the padding,
    so the grid is 4 x 7, and cell (i, j) sits at (14 j + 6.5, 14 i + 6.5) for all three users."""
    torch.manual_seed(0)
    teacher = ImageTeacher("vit_tiny_patch14", feature_dim=16)
    out = teacher(torch.rand(1, 3, 56, 100))
    assert out.head.shape == (1, 16, 4, 7) and out.ipv.shape == (1, 16, 56, 100)
    up = upsample_cells(out.head, 14, 6.5, (56, 100))
    torch.testing.assert_close(out.ipv, F.normalize(up, dim=1))
    # pixel 14 j + 7 is half a pixel right of cell j's centre: 1/28 of the way to cell j + 1
    row, step = out.head[..., 0, :], out.head[..., 0, 1:] - out.head[..., 0, :-1]  # (1, 16, 7), (1, 16, 6)
    torch.testing.assert_close(up[..., 6, 7:90:14], row[..., :6] + step / 28)
    frustum = make_frustum(56, 100, teacher.grid.stride, 1.0, 3.0, 1.0, teacher.grid.centre)  # (2, 4, 7, 3)
    assert frustum.shape[1:3] == out.head.shape[-2:]
    assert torch.equal(frustum[0, 0, :, 0], 14.0 * torch.arange(7, dtype=torch.float64) + 6.5)
    assert torch.equal(frustum[0, :, 0, 1], 14.0 * torch.arange(4, dtype=torch.float64) + 6.5)
    offsets = torch.arange(-7.0, 7.0, 0.5)  # a pair at 14 j + 6.5 + du lands in cell j for du in [-7, 7)
    uv = torch.stack([14 * 3 + 6.5 + offsets, torch.full_like(offsets, 14 * 2 + 6.5)], 1)
    uv = torch.cat([uv, torch.tensor([[99.0, 6.0]])])  # the crop's last column: past cell 6's window
    depth = torch.linspace(5.0, 30.0, len(uv))
    got = depth_targets(torch.zeros(len(uv), dtype=torch.long), uv, depth, 1, 4, 7, 14, 6.5, (56, 100))
    assert got[0, 2, 3] == depth[0] and got[0, 0, 6] == depth[-1] and (got > 0).sum() == 2
    dropped = depth_targets(torch.zeros(len(uv), dtype=torch.long), uv, depth, 1, 4, 7, 14, 6.5)
    assert dropped[0, 0, 6] == 0.0  # without the crop size, pixel 99 is past the 7 x 14 = 98 px grid


@pytest.mark.parametrize("centre", [0, 1, 3, 4])
def test_upsample_puts_cell_j_at_pixel_stride_j_plus_centre(centre):
    s, hf, wf = 4, 3, 5
    head = torch.randn(2, 6, hf, wf, dtype=torch.float64)
    up = upsample_cells(head, s, centre)  # (2, 6, 12, 20)
    assert up.shape == (2, 6, s * hf, s * wf)
    u = torch.arange(s * wf, dtype=torch.float64)
    v = torch.arange(s * hf, dtype=torch.float64)
    pos_u = ((u - centre) / s).clamp(0, wf - 1)  # (W,) continuous cell coordinate of each pixel
    pos_v = ((v - centre) / s).clamp(0, hf - 1)

    def weights(pos, n):  # (P, n) linear interpolation matrix
        return torch.clamp(1 - (pos[:, None] - torch.arange(n, dtype=torch.float64)).abs(), min=0)

    expected = torch.einsum("ncij,yi,xj->ncyx", head, weights(pos_v, hf), weights(pos_u, wf))
    torch.testing.assert_close(up, expected)
    fit_v, fit_u = (
        (s * hf - centre + s - 1) // s,
        (s * wf - centre + s - 1) // s,
    )  # cells whose pixel is inside
    torch.testing.assert_close(up[..., centre::s, centre::s], head[..., :fit_v, :fit_u])


def test_teacher_ipv_feature_of_cell_j_is_at_pixel_4j_and_frustum_agrees():
    torch.manual_seed(0)
    teacher = ImageTeacher("resnet18", feature_dim=16, output_stride=4)
    out = teacher(torch.rand(1, 3, 32, 48))
    cells = F.normalize(out.head, dim=1)  # (1, 16, 8, 12)
    torch.testing.assert_close(out.ipv[..., ::4, ::4], cells)  # pixel (4i, 4j) = cell (i, j)
    frustum = make_frustum(32, 48, teacher.grid.stride, 1.0, 3.0, 1.0)  # (2, 8, 12, 3)
    assert torch.equal(frustum[0, 0, :, 0], 4.0 * torch.arange(12, dtype=torch.float64))
    assert torch.equal(frustum[0, :, 0, 1], 4.0 * torch.arange(8, dtype=torch.float64))


def test_depth_target_patch_of_cell_j_is_centred_on_pixel_4j():
    """A pair at u = 4j + du, v = 4i + dv lands in cell (i, j) exactly for du, dv in [-2, 2)."""
    offsets = torch.arange(-2.0, 2.0, 0.25)  # (16,)
    du, dv = torch.meshgrid(offsets, offsets, indexing="ij")
    i, j = 2, 3
    uv = torch.stack([4 * j + du.flatten(), 4 * i + dv.flatten()], 1)  # (256, 2)
    depth = torch.linspace(5.0, 30.0, len(uv))
    got = depth_targets(torch.zeros(len(uv), dtype=torch.long), uv, depth, 1, 6, 8, 4)
    assert got[0, i, j] == depth.min() and (got > 0).sum() == 1
    assert float(uv[:, 0].mean()) == pytest.approx(4 * j - 0.125)  # samples of [4j - 2, 4j + 2)
    edges = torch.tensor([[4 * j + 2.0, 4 * i], [4 * j - 2.25, 4 * i]])  # just past either end of the window
    beyond = depth_targets(torch.zeros(2, dtype=torch.long), edges, torch.tensor([7.0, 8.0]), 1, 6, 8, 4)
    assert beyond[0, i, j + 1] == 7.0 and beyond[0, i, j - 1] == 8.0 and beyond[0, i, j] == 0.0
