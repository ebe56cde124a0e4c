"""BEiT block-wise masking against a naive cell-by-cell reference written from the spec."""
import math

import numpy as np
import pytest
import torch

from evaclip.errors import ConfigError
from evaclip.models.masking import BlockMaskGenerator, block_masks


def naive_mask(grid, n_mask, min_block, rng, min_aspect=0.3):
    """BEiT's recipe with per-cell loops; same random draws in the same order as the generator."""
    mask = [[0] * grid for _ in range(grid)]
    lo, hi = math.log(min_aspect), math.log(1 / min_aspect)
    count = 0
    while count < n_mask:
        budget = n_mask - count
        added = 0
        for _ in range(10):
            area = min_block + (budget - min_block) * rng.random()
            aspect = math.exp(lo + (hi - lo) * rng.random())
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if h >= grid or w >= grid:
                continue
            top, left = int(rng.integers(0, grid - h + 1)), int(rng.integers(0, grid - w + 1))
            new = sum(1 for i in range(top, top + h) for j in range(left, left + w) if not mask[i][j])
            if 0 < new <= budget:
                for i in range(top, top + h):
                    for j in range(left, left + w):
                        mask[i][j] = 1
                added = new
                break
        if added == 0:
            break
        count += added
    return np.array(mask, dtype=bool)


@pytest.mark.parametrize("grid", [16, 8, 4])
def test_matches_naive_reference_exactly(grid):
    gen = BlockMaskGenerator(grid)
    ours = gen(50, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    ref = np.stack([naive_mask(grid, gen.num_masking_patches, gen.min_num_patches, rng).reshape(-1)
                    for _ in range(50)])
    assert ours.dtype == torch.bool and ours.shape == (50, grid * grid)
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_defaults_scale_with_the_grid():
    assert (BlockMaskGenerator(16).num_masking_patches, BlockMaskGenerator(16).min_num_patches) == (105, 16)
    assert (BlockMaskGenerator(8).num_masking_patches, BlockMaskGenerator(8).min_num_patches) == (26, 4)
    assert (BlockMaskGenerator(4).num_masking_patches, BlockMaskGenerator(4).min_num_patches) == (7, 1)


def test_count_bounds_and_expected_ratio():
    gen = BlockMaskGenerator(16)
    counts = gen(1000, 0).sum(1)
    assert counts.max() <= 105  # a block never overshoots the budget
    assert counts.min() >= 16  # several blocks land before the budget runs out (observed min ~96)
    ratio = counts.float().mean().item() / 256
    assert 0.39 < ratio <= 105 / 256
    # The naive reference with another seed gives the same mean within sampling noise.
    rng = np.random.default_rng(123)
    ref = np.array([naive_mask(16, 105, 16, rng).sum() for _ in range(1000)])
    assert abs(counts.float().mean().item() - ref.mean()) < 4 * ref.std() / math.sqrt(1000) + 0.5


def test_masks_are_unions_of_the_recorded_rectangles():
    gen = BlockMaskGenerator(16)
    rng = np.random.default_rng(3)
    single_block_seen = 0
    for _ in range(40):
        mask, blocks = gen.sample(rng)
        union = np.zeros_like(mask)
        for b in blocks:
            assert 1 <= b.height < 16 and 1 <= b.width < 16
            assert 0 <= b.top <= 16 - b.height and 0 <= b.left <= 16 - b.width
            union[b.top:b.top + b.height, b.left:b.left + b.width] = True
        np.testing.assert_array_equal(mask, union)
    # One block on its own: the masked cells form exactly one filled rectangle (connected-component check).
    gen1 = BlockMaskGenerator(16, num_masking_patches=20, min_num_patches=20)
    for _ in range(200):
        mask, blocks = gen1.sample(rng)
        if len(blocks) != 1:
            continue
        single_block_seen += 1
        rows, cols = np.nonzero(mask)
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and box.sum() == mask.sum()
        assert 0.3 / 2 <= box.shape[0] / box.shape[1] <= 2 / 0.3  # log-uniform aspect, up to rounding
    assert single_block_seen > 10


def test_seeding_is_deterministic_for_numpy_and_torch_generators():
    a = block_masks(8, 8, np.random.default_rng(11))
    b = block_masks(8, 8, np.random.default_rng(11))
    c = block_masks(8, 8, np.random.default_rng(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    t1 = block_masks(8, 8, torch.Generator().manual_seed(5))
    t2 = block_masks(8, 8, torch.Generator().manual_seed(5))
    assert torch.equal(t1, t2)
    assert torch.equal(block_masks(4, 8, 9), block_masks(4, 8, 9))
    # Each image of a batch gets its own mask.
    assert len({tuple(m.tolist()) for m in block_masks(16, 8, 0)}) > 1


def test_bad_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="num_masking_patches"):
        BlockMaskGenerator(4, num_masking_patches=17)
    with pytest.raises(ConfigError, match="grid"):
        BlockMaskGenerator(0)
    with pytest.raises(ConfigError, match="min_aspect"):
        BlockMaskGenerator(8, min_aspect=2.0)


# --- the MIM task uses EVA-02's masking and augmentation (asuka: --num_mask_patches 105, flip then crop) ---

def _mim_task(tmp_path, *overrides):
    import evaclip
    from safetensors.torch import save_file

    from evaclip.train.config import apply_overrides
    from evaclip.train.recipes import get_recipe
    from evaclip.train.tasks import make_task
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.exists():
        save_file(evaclip.create_model("evaclip-tiny").state_dict(), teacher)
    return make_task(apply_overrides(get_recipe("tiny"), ["task=mim", f"mim.teacher={teacher}",
                                                          "mim.teacher_model=evaclip-tiny", *overrides]))


@pytest.mark.parametrize("image_size,grid,count,min_block", [(128, 16, 105, 16), (64, 8, 26, 4), (32, 4, 7, 1)])
def test_mim_task_masks_eva02s_105_of_256_by_default(tmp_path, image_size, grid, count, min_block):
    # evaclip-tiny has patch 8: 128 px is EVA-02's 16x16 grid (224 px at patch 14)
    task = _mim_task(tmp_path, f"model.image_size={image_size}")
    assert (task.masker.grid, task.masker.num_masking_patches, task.masker.min_num_patches) == (grid, count,
                                                                                             min_block)
    masks = task.masker(64, 0)
    assert masks.shape == (64, grid * grid) and int(masks.sum(1).max()) == count
    if grid == 16:  # BEiT stops when a block fails to fit, a few short; on average above 0.4 * 256 = 102
        assert masks.sum(1).float().mean() > 102.5


def test_mim_task_mask_ratio_still_sets_the_share_when_given(tmp_path):
    assert _mim_task(tmp_path, "model.image_size=128", "mim.mask_ratio=0.4").masker.num_masking_patches == 102


def test_mim_augmentation_flips_before_the_crop_like_torchvision(tmp_path):
    from PIL import Image

    from evaclip.transforms import image_transform
    task = _mim_task(tmp_path)
    transform = task.train_transform()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    crop = image_transform(32, is_train=True, scale=(0.2, 1.0))
    flips = 0
    for seed in range(60):
        torch.manual_seed(seed)
        got = transform(img)
        torch.manual_seed(seed)
        # RandomHorizontalFlip(0.5): torch.rand(1) < p, then RandomResizedCrop on the same RNG stream
        flipped = bool(torch.rand(1) < 0.5)
        want = crop(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else img)
        assert torch.equal(got, want), seed
        flips += flipped
    assert 15 < flips < 45


def test_mim_hflip_zero_is_the_crop_alone_as_before(tmp_path):
    from PIL import Image

    from evaclip.train.recipes import get_recipe
    from evaclip.transforms import image_transform
    assert get_recipe("demo-mim").mim.hflip == 0.0  # the demo keeps the augmentation of its published runs
    transform = _mim_task(tmp_path, "mim.hflip=0").train_transform()
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    crop = image_transform(32, is_train=True, scale=(0.2, 1.0))
    for seed in range(5):
        torch.manual_seed(seed)
        got = transform(img)
        torch.manual_seed(seed)
        assert torch.equal(got, crop(img))
