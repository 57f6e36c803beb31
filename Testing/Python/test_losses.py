"""The ProMISe boundary-aware loss and the normalised surface Dice, on hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ProMISeLib.metrics import nsd
from ProMISeTrain.losses import BoundaryAwareLoss, edge_map, one_hot_labels
from scipy import ndimage


def _cube(shape=(12, 12, 12), low=3, high=9) -> torch.Tensor:
    label = torch.zeros((1, *shape), dtype=torch.long)
    label[0, low:high, low:high, low:high] = 1
    return label


def _logits(label: torch.Tensor, scale: float = 50.0) -> torch.Tensor:
    """Logits whose softmax is the one-hot of ``label`` to float precision."""
    return (one_hot_labels(label, 2) * 2.0 - 1.0) * scale


def test_perfect_prediction_gives_zero_loss():
    label = _cube()
    terms = BoundaryAwareLoss().terms(_logits(label), label)
    for name in ("total", "dice", "ce", "edge"):
        assert float(terms[name]) == pytest.approx(0.0, abs=1e-6), name


def test_loss_grows_with_error_and_has_a_gradient():
    label = _cube()
    logits = torch.zeros((1, 2, 12, 12, 12), requires_grad=True)
    loss = BoundaryAwareLoss()(logits, label)
    assert float(loss.detach()) > 0.5
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_dice_and_ce_match_their_definitions():
    torch.manual_seed(0)
    label = _cube()
    logits = torch.randn(1, 2, 12, 12, 12)
    terms = BoundaryAwareLoss().terms(logits, label)
    p = torch.softmax(logits, 1)[:, 1]
    y = label.float()
    expected_dice = 1 - (2 * (p * y).sum() + 1e-5) / (p.sum() + y.sum() + 1e-5)  # no background channel
    assert float(terms["dice"]) == pytest.approx(float(expected_dice), rel=1e-5)
    assert float(terms["ce"]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, label)), rel=1e-5)
    expected = 0.5 * terms["dice"] + 0.5 * terms["ce"] + 10 * terms["edge"]
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)


def test_edge_term_penalises_a_boundary_only_error():
    label = _cube()
    # The prediction misses just the label's outer layer: its boundary sits one voxel inside.
    eroded = torch.from_numpy(ndimage.binary_erosion(label[0].numpy()).astype(np.int64))[None]
    assert 0 < int((label != eroded).sum()) < int(label.sum())
    loss = BoundaryAwareLoss()
    matching = loss.terms(_logits(label), label)["edge"]
    off_boundary = loss.terms(_logits(eroded), label)["edge"]
    assert float(matching) == pytest.approx(0.0, abs=1e-7)
    assert float(off_boundary) > 1e-3


def test_edge_term_is_skipped_without_foreground():
    empty = torch.zeros((1, 12, 12, 12), dtype=torch.long)
    # A prediction with a lesion (so edge(P) is far from edge(Y) = 0), yet no edge term.
    terms = BoundaryAwareLoss().terms(_logits(_cube()), empty)
    assert float(terms["edge"]) == 0.0
    assert float(terms["ce"]) > 1.0


def test_edge_kernel_pools_d_and_h_but_not_w():
    """The upstream (5, 5, 1) quirk: a step along W has no edge, a step along D or H does."""
    step_w = torch.zeros(1, 1, 9, 9, 9)
    step_w[..., 5:] = 1.0
    step_d = step_w.permute(0, 1, 4, 3, 2).contiguous()
    interior = (slice(None), slice(None), slice(2, 7), slice(2, 7))
    assert float(edge_map(step_w)[interior].max()) == pytest.approx(0.0, abs=1e-7)
    assert float(edge_map(step_d)[interior].max()) > 0.1


def test_target_shapes_and_weights():
    label = _cube()
    logits = torch.randn(1, 2, 12, 12, 12)
    loss = BoundaryAwareLoss()
    assert float(loss(logits, label[:, None])) == pytest.approx(float(loss(logits, label)))
    only_dice = BoundaryAwareLoss(dice_weight=1.0, ce_weight=0.0, edge_weight=0.0).terms(logits, label)
    assert float(only_dice["total"]) == pytest.approx(float(only_dice["dice"]))
    with pytest.raises(ValueError):
        BoundaryAwareLoss()(logits, torch.zeros((1, 12, 12, 11), dtype=torch.long))
    with pytest.raises(ValueError):
        BoundaryAwareLoss(edge_kernel=(4, 4, 1))


# --- normalised surface Dice -----------------------------------------------------------------
def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_nsd_of_identical_masks_is_one():
    mask = _ball((30, 30, 30), (15, 15, 15), 6)
    assert nsd(mask, mask, (1.0, 1.0, 1.0)) == 1.0


def test_nsd_within_tolerance_is_one():
    a = _ball((30, 30, 30), (15, 15, 15), 6)
    b = np.roll(a, 2, axis=2)  # 2 mm apart, tolerance 5 mm
    assert nsd(a, b, (1.0, 1.0, 1.0), tolerance_mm=5.0) == 1.0
    assert nsd(a, b, (1.0, 1.0, 1.0), tolerance_mm=1.0) < 0.9


def test_nsd_beyond_tolerance_is_near_zero():
    a = _ball((40, 40, 40), (20, 20, 10), 3)
    b = _ball((40, 40, 40), (20, 20, 28), 3)  # 18 mm apart
    assert nsd(a, b, (1.0, 1.0, 1.0), tolerance_mm=5.0) < 0.05


def test_nsd_uses_the_spacing():
    a = np.zeros((24, 16, 16), bool)
    b = np.zeros_like(a)
    a[10:12], b[13:15] = True, True  # two slabs, their facing surfaces 2 slices apart
    assert nsd(a, b, (1.0, 1.0, 1.0), tolerance_mm=5.0) == 1.0  # 2 mm
    assert nsd(a, b, (4.0, 1.0, 1.0), tolerance_mm=5.0) == 0.0  # 8 mm at 4 mm slices


def test_nsd_empty_masks():
    empty = np.zeros((5, 5, 5), bool)
    full = _ball((5, 5, 5), (2, 2, 2), 1)
    assert nsd(empty, empty, (1.0, 1.0, 1.0)) == 1.0
    assert nsd(full, empty, (1.0, 1.0, 1.0)) == 0.0
