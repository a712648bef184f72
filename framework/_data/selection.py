"""Which rows and columns of a dataset to decode: split choice, hold-out, stratified subsets, column detection.

This is the part of the data path that needs the dataset loaded through ``datasets``; a cache hit skips it
(see :mod:`framework._data.datacache`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from framework._base.errors import RtlabError
from framework._base.options import DataOptions

log = logging.getLogger("framework._data.data")

IMAGE_COLUMNS = ("image", "img", "images", "pixel_values", "pixels", "x", "input")
LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label", "target", "targets", "class", "y")


# --------------------------------------------------------------------------------------------------- subsetting
def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` sorted indices with every class kept in proportion (largest remainders), drawn with ``seed``."""
    n = len(labels)
    if size < 0:
        raise RtlabError(f"subset size must be positive, got {size}")
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if (labels < 0).any():
        return np.sort(rng.permutation(n)[:size])
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


# ------------------------------------------------------------------------------------------------------ columns
def detect_columns(features: Mapping[str, Any], opts: DataOptions, what: str) -> tuple[str, str | None]:
    """(image column, label column or None) from the features (``Image``/arrays, ``ClassLabel``) or names."""
    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

    cols = list(features)
    if opts.image_column:
        if opts.image_column not in cols:
            raise RtlabError(f"{what} has no column '{opts.image_column}' (columns: {', '.join(cols)}); "
                             "fix data.image_column")
        image = opts.image_column
    else:
        array_types = tuple(getattr(datasets, n) for n in ("Array2D", "Array3D") if hasattr(datasets, n))
        image = next((c for c in cols if isinstance(features[c], datasets.Image)), None)
        image = image or next((c for c in cols if isinstance(features[c], array_types)), None)
        image = image or next((c for c in IMAGE_COLUMNS if c in cols), None)
        if image is None:
            raise RtlabError(f"{what} has no image column (columns: {', '.join(cols)}); "
                             "set data.image_column=NAME")
    if opts.label_column:
        if opts.label_column not in cols:
            raise RtlabError(f"{what} has no column '{opts.label_column}' (columns: {', '.join(cols)}); "
                             "fix data.label_column")
        return image, opts.label_column
    label = next((c for c in cols if isinstance(features[c], datasets.ClassLabel)), None)
    label = label or next((c for c in LABEL_COLUMNS if c in cols and c != image), None)
    return image, label


def class_names(features: Mapping[str, Any], label: str | None, values: np.ndarray) -> tuple[list[str], dict]:
    """Class names and a value → index map (ClassLabel names, else the sorted distinct values)."""
    import datasets  # lazy: datasets (with pyarrow) costs ~1 s; only commands that read data pay it

    if label is None:
        return [], {}
    feat = features[label]
    if isinstance(feat, datasets.ClassLabel):
        return list(feat.names), {}
    distinct = sorted(set(values.tolist()))
    if all(isinstance(v, (int, np.integer)) for v in distinct) and distinct == list(range(len(distinct))):
        return [str(v) for v in distinct], {}
    return [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}


def _labels_of(ds: Any, label: str | None) -> np.ndarray:
    if label is None:
        return np.full(len(ds), -1, dtype=np.int64)
    return np.asarray(ds.with_format(None)[label])


def _pick_split(splits: Mapping[str, Any], wanted: str, what: str, fallbacks: Sequence[str] = ()) -> str | None:
    if wanted in splits:
        return wanted
    for alt in fallbacks:
        if alt in splits:
            return alt
    return None


@dataclass
class Selection:
    """The splits to decode (after hold-out and subsets), their columns and class names."""

    train: Any
    test: Any
    image: str
    label: str | None
    label_map: dict
    classes: list[str]
    train_name: str


def select_splits(source: Any, opts: DataOptions, name: str) -> Selection:
    """Load the source's splits through ``datasets`` and pick, hold out and subset them as ``data`` says."""
    splits = source.load()
    if not splits:
        raise RtlabError(f"dataset '{name}' has no splits")
    train_name = _pick_split(splits, opts.train_split, name)
    if train_name is None:
        raise RtlabError(f"dataset '{name}' has no split '{opts.train_split}' (splits: {', '.join(splits)}); "
                         "set data.train_split")
    train_ds = splits[train_name]
    test_name = _pick_split(splits, opts.test_split, name,
                            () if opts.test_split != "test" else ("validation", "valid", "val"))
    image, label = detect_columns(train_ds.features, opts, f"dataset '{name}'")
    if test_name is None:
        if opts.test_split != "test":
            raise RtlabError(f"dataset '{name}' has no split '{opts.test_split}' (splits: {', '.join(splits)}); "
                             "set data.test_split, or leave it at 'test' to hold out data.test_fraction")
        if not 0.0 < opts.test_fraction < 1.0:
            raise RtlabError(f"data.test_fraction must be in (0, 1), got {opts.test_fraction}")
        labels = _labels_of(train_ds, label)
        held = stratified_subset(labels, int(round(len(labels) * opts.test_fraction)), opts.seed + 7919)
        rest = np.setdiff1d(np.arange(len(labels)), held)
        log.info("dataset '%s' has no test split: holding out %d of %d train images (data.test_fraction=%s)",
                 name, len(held), len(labels), opts.test_fraction)
        test_ds, train_ds = train_ds.select(held), train_ds.select(rest)
    else:
        test_ds = splits[test_name]
    all_train_labels = _labels_of(train_ds, label)
    classes, label_map = class_names(train_ds.features, label, all_train_labels)
    for size, key in ((opts.train_size, "train_size"), (opts.test_size, "test_size")):
        if size is not None and size <= 0:
            raise RtlabError(f"data.{key} must be a positive number of images, got {size}")
    if opts.train_size is not None:
        train_ds = train_ds.select(stratified_subset(all_train_labels, opts.train_size, opts.seed))
    if opts.test_size is not None:
        test_ds = test_ds.select(stratified_subset(_labels_of(test_ds, label), opts.test_size, opts.seed + 1))
    return Selection(train_ds, test_ds, image, label, label_map, classes, train_name)
