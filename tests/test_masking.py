import numpy as np
import pytest

from masking_generator import RandomMaskingGenerator, TubeMaskingGenerator, build_masking_generator


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_tube_mask_counts_and_structure(ratio):
    gen = TubeMaskingGenerator((8, 14, 14), ratio, seed=0)
    for _ in range(5):
        m = gen()
        assert m.shape == (8 * 14 * 14,) and m.dtype == bool
        per_frame = int(ratio * 196)
        assert m.sum() == per_frame * 8 == gen.num_mask
        slices = m.reshape(8, 196)
        assert (slices == slices[0]).all()  # one spatial mask repeated over time


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_random_mask_exact_count_not_tube(ratio):
    gen = RandomMaskingGenerator((8, 14, 14), ratio, seed=1)
    masks = [gen() for _ in range(5)]
    assert all(m.sum() == int(ratio * 1568) for m in masks)
    assert any(not (m.reshape(8, 196) == m.reshape(8, 196)[0]).all() for m in masks)


def test_seed_reproducible_and_rng_argument():
    a = TubeMaskingGenerator((4, 7, 7), 0.75, seed=3)
    b = TubeMaskingGenerator((4, 7, 7), 0.75, seed=3)
    c = TubeMaskingGenerator((4, 7, 7), 0.75, seed=4)
    seq_a, seq_b, seq_c = [a() for _ in range(3)], [b() for _ in range(3)], [c() for _ in range(3)]
    assert all((x == y).all() for x, y in zip(seq_a, seq_b))
    assert any((x != y).any() for x, y in zip(seq_a, seq_c))
    r1, r2 = np.random.default_rng([7, 1]), np.random.default_rng([7, 1])
    assert (a(r1) == b(r2)).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="--mask_ratio"):
        TubeMaskingGenerator((8, 14, 14), 1.0)
    with pytest.raises(ValueError, match="--mask_ratio"):
        RandomMaskingGenerator((8, 14, 14), -0.1)
    with pytest.raises(ValueError, match="--mask_type"):
        build_masking_generator("block", (8, 14, 14), 0.5)
