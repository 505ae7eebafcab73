"""Token masks for masked video modelling (VideoMAE, Tong et al. 2022, Sec. 3.3).

A mask is a boolean numpy array of shape ``(N,)`` with ``N = T' * H' * W'`` tokens in the
frame-major ``(t, h, w)`` order of the tubelet embedding; ``True`` means the token is hidden
from the student (``bool_masked_pos``). Both generators hide exactly
``int(mask_ratio * N)`` tokens (tube: ``int(mask_ratio * H' * W')`` per slice).
"""
import numpy as np


def _check(grid, mask_ratio):
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"token grid must be (T', H', W') of positive ints, got {grid}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"--mask_ratio must be in [0, 1), got {mask_ratio}")


class RandomMaskingGenerator:
    """Hide ``int(mask_ratio * N)`` tokens chosen uniformly over the whole clip.

    Args:
        grid: ``(T', H', W')`` token grid (``model.patch_embed.grid_size``).
        mask_ratio: fraction of tokens to hide, in ``[0, 1)``.
        seed: seed of this generator's own RNG (``None``: fresh entropy).
    Raises:
        ValueError: bad grid or ratio.
    """

    def __init__(self, grid, mask_ratio, seed=None):
        _check(grid, mask_ratio)
        self.grid = tuple(int(g) for g in grid)
        self.num_patches = int(np.prod(self.grid))
        self.num_mask = int(mask_ratio * self.num_patches)
        self.rng = np.random.default_rng(seed)

    def __repr__(self):
        return f"RandomMaskingGenerator(tokens={self.num_patches}, masked={self.num_mask})"

    def __call__(self, rng=None):
        """Draw one mask ``[N]`` (True = hidden), from ``rng`` when given, else our own RNG.

        Data loader workers pass an RNG seeded per worker and sample, since copies of this
        object in several workers would otherwise draw identical masks.
        """
        rng = self.rng if rng is None else rng
        mask = np.zeros(self.num_patches, dtype=bool)
        mask[rng.choice(self.num_patches, self.num_mask, replace=False)] = True
        return mask  # [N]


class TubeMaskingGenerator(RandomMaskingGenerator):
    """Tube masking: one spatial mask repeated over all ``T'`` temporal slices.

    Every slice hides the same ``int(mask_ratio * H' * W')`` positions, so every slice keeps
    the same visible tokens (VideoMAE Sec. 3.3, "tube masking").
    """

    def __init__(self, grid, mask_ratio, seed=None):
        super().__init__(grid, mask_ratio, seed)
        t, h, w = self.grid
        self.num_mask_per_frame = int(mask_ratio * h * w)
        self.num_mask = self.num_mask_per_frame * t

    def __repr__(self):
        return (f"TubeMaskingGenerator(tokens={self.num_patches}, masked={self.num_mask}, "
                f"per slice={self.num_mask_per_frame})")

    def __call__(self, rng=None):
        rng = self.rng if rng is None else rng
        t, h, w = self.grid
        frame = np.zeros(h * w, dtype=bool)
        frame[rng.choice(h * w, self.num_mask_per_frame, replace=False)] = True
        return np.tile(frame, t)  # [T' * H' * W'], frame-major


MASK_GENERATORS = {"tube": TubeMaskingGenerator, "random": RandomMaskingGenerator}


def build_masking_generator(mask_type, grid, mask_ratio, seed=None):
    """Build the generator named by ``--mask_type`` (``tube`` or ``random``).

    Raises:
        ValueError: unknown ``mask_type`` or bad grid/ratio.
    """
    if mask_type not in MASK_GENERATORS:
        raise ValueError(f"--mask_type must be one of {sorted(MASK_GENERATORS)}, got {mask_type!r}")
    return MASK_GENERATORS[mask_type](grid, mask_ratio, seed)
