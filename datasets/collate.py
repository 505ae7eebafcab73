"""Batching items of data sets that return ``None`` for videos they could not decode."""
from torch.utils.data import default_collate


def collate_skip_none(batch):
    """Drop ``None`` items and ``default_collate`` the rest (dict items).

    Args:
        batch (list[dict | None]): data set items.
    Returns:
        dict: the collated items (tensors stacked along a new dim 0, ints as an int64
        tensor ``[B]``, strings such as ``video_id`` as a list) plus ``'num_skipped'``
        (int); only ``{'num_skipped': len(batch)}`` when every item is ``None``.
    Raises:
        TypeError: the items are not dicts.
    """
    kept = [item for item in batch if item is not None]
    num_skipped = len(batch) - len(kept)
    if not kept:
        return {"num_skipped": num_skipped}
    if not all(isinstance(item, dict) for item in kept):
        raise TypeError(f"collate_skip_none expects dict items, got {type(kept[0]).__name__}")
    collated = default_collate(kept)
    collated["num_skipped"] = num_skipped
    return collated
