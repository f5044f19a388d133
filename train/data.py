"""Find labelled photos on disk, check that each decodes, and split them reproducibly.

Each root (pt-train takes several) has one of two layouts:
  ROOT/<negative>/, ROOT/<positive>/                   split here, seeded
  ROOT/{train,val,test}/<negative|positive>/          split already chosen by the user
and may hold two optional CSVs, paths relative to the root:
  frames.csv  file,<group column>,...   frames of one group (a road segment) share a split
  boxes.csv   file,x0,y0,x1,y1          pothole boxes in pixels, to label tiles directly
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from pothole_edge import csvcells
from pothole_edge.errors import UsageError
from pothole_edge.images import ImageDecodeError, decode, read_file

log = logging.getLogger("pt-train")

POSITIVE_NAMES = ("pothole", "potholes")
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("root", "path", "label", "split", "sha256", "group", "boxes")
HINT = "expected normal/ and pothole/ sub-folders (or name the positive one with --positive)"
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Sample:
    root: int  # index into LabelledFolder.roots
    path: str  # relative to its root, with forward slashes
    label: int  # 1 is the positive class
    sha256: str
    split: str = ""
    group: str = ""  # frames sharing a group share a split
    boxes: tuple[Box, ...] | None = None  # None: this root has no boxes.csv


@dataclass
class LabelledFolder:
    roots: list[Path]
    class_names: tuple[str, str]  # (negative, positive)
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def path(self, sample: Sample) -> Path:
        return self.roots[sample.root] / sample.path

    def summary(self) -> dict:
        groups = defaultdict(int)
        for s in self.samples:
            groups[s.sha256] += 1
        counts = {name: {c: 0 for c in self.class_names} for name in SPLITS}
        per_root = [{name: {c: 0 for c in self.class_names} for name in SPLITS} for _ in self.roots]
        for s in self.samples:
            if s.split:
                counts[s.split][self.class_names[s.label]] += 1
                per_root[s.root][s.split][self.class_names[s.label]] += 1
        return {
            "roots": [str(r) for r in self.roots],
            "class_names": list(self.class_names),
            "images": len(self.samples),
            "duplicate_files": sum(n - 1 for n in groups.values()),
            "boxed_images": sum(1 for s in self.samples if s.boxes),
            "skipped": len(self.skipped),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
            "splits": counts,
            "splits_per_root": per_root,
        }


def source_names(roots: list[Path]) -> list[str]:
    """A name per data root for reports: its folder name, numbered where two share one."""
    names = [r.name for r in roots]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise UsageError(f"cannot list {folder}: {e.strerror or e}; check its permissions") from None


def resolve_classes(folder: Path, positive: str | None) -> dict[str, int]:
    """Map the two class sub-folders of `folder` to labels: negative 0, positive 1."""
    subdirs = _subdirs(folder)
    if not subdirs:
        raise UsageError(f"no class folders in {folder}: {HINT}")
    if positive and positive not in subdirs:
        raise UsageError(f"--positive {positive} is not a folder in {folder}; folders there: {', '.join(subdirs)}")
    positives = [positive] if positive else [n for n in subdirs if n.lower() in POSITIVE_NAMES]
    if len(positives) > 1:
        raise UsageError(
            f"two positive class folders in {folder} ({', '.join(positives)}); keep one or pass --positive NAME"
        )
    negatives = [n for n in subdirs if n not in positives]
    if len(subdirs) == 1:
        raise UsageError(f"only one class folder ({subdirs[0]}/) in {folder}: training needs both classes; {HINT}")
    if len(positives) != 1 or len(negatives) != 1 or len(subdirs) != 2:
        raise UsageError(f"cannot tell the classes apart in {folder} (folders: {', '.join(subdirs)}); {HINT}")
    return {negatives[0]: 0, positives[0]: 1}


def resolve_eval_classes(folder: Path, class_names: tuple[str, str]) -> dict[str, int]:
    """Map the class folders present to the model's labels; one class alone is fine."""
    known = {class_names[0].lower(): 0, class_names[1].lower(): 1} | {
        n: 1 for n in POSITIVE_NAMES if n != class_names[0].lower()
    }
    subdirs = _subdirs(folder)
    unknown = [n for n in subdirs if n.lower() not in known]
    if not subdirs or unknown:
        found = f"found {', '.join(n + '/' for n in subdirs)}" if subdirs else "found none"
        raise UsageError(f"class folders in {folder} must be named {class_names[0]}/ or {class_names[1]}/ ({found})")
    for n in subdirs:
        if not os.access(folder / n, os.R_OK | os.X_OK):
            raise UsageError(f"class folder {folder / n} is not readable; fix its permissions")
    return {n: known[n.lower()] for n in subdirs}


def _list_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and not f.endswith(".csv"))
    return files


_checked: dict[tuple[str, int, int], tuple[str | None, str]] = {}  # a cross-validation scans its roots per fold


def _check(path: Path) -> tuple[str | None, str]:
    """Return (sha256, "") for a readable image, or (None, reason)."""
    try:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key in _checked:
        return _checked[key]
    try:
        data = read_file(path)
        decode(data)
        result: tuple[str | None, str] = (hashlib.sha256(data).hexdigest(), "")
    except ImageDecodeError as e:
        result = (None, str(e))
    if key is not None:
        _checked[key] = result
    return result


def scan(
    root_index: int, root: Path, entries: list[tuple[Path, int, str]], workers: int = 4
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode every file once; unreadable ones are skipped with a warning, never fatal."""
    from pothole_edge.progress import progress

    files = [(f, label, split) for folder, label, split in entries for f in _list_files(folder)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(
            progress(
                pool.map(lambda e: _check(e[0]), files), total=len(files), desc=f"checking {root.name}", unit="img"
            )
        )
    samples, skipped = [], []
    for (f, label, split), (digest, reason) in zip(files, results):
        rel = f.relative_to(root).as_posix()
        if digest is None:
            log.warning("skipping %s: %s", _printable(rel), reason)
            skipped.append((str(root / rel), reason))
        else:
            samples.append(Sample(root_index, rel, label, digest, split))
    return samples, skipped


def _printable(text: str) -> str:
    return (
        text.encode("utf-8", "backslashreplace").decode("utf-8")
        if any("\udc80" <= c <= "\udcff" for c in text)
        else text
    )


def _require_dir(root: Path) -> None:
    if not root.exists():
        raise UsageError(
            f"data directory {root} does not exist; pass --data DIR with normal/ and pothole/ sub-folders, or --data "
            "demo"
        )
    if not root.is_dir():
        raise UsageError(f"--data {root} is not a directory")


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        raise UsageError(f"cannot read {path}: {e}; fix or remove it") from None


def read_groups(root: Path, column: str) -> dict[str, str]:
    """file -> group from ROOT/frames.csv, or {} when there is none."""
    path = root / "frames.csv"
    if not path.is_file():
        return {}
    rows = _read_csv(path)
    if rows and (column not in rows[0] or "file" not in rows[0]):
        raise UsageError(
            f"{path} has no 'file' or '{column}' column (columns: {', '.join(rows[0])}); pass --group-column NAME"
        )
    return {r["file"]: r[column] for r in rows if r.get("file") and r.get(column)}


def read_boxes(root: Path) -> dict[str, list[Box]] | None:
    """file -> pothole boxes from ROOT/boxes.csv, or None when there is none; bad rows are skipped."""
    path = root / "boxes.csv"
    if not path.is_file():
        return None
    boxes: dict[str, list[Box]] = defaultdict(list)
    bad = 0
    for row in _read_csv(path):
        try:
            x0, y0, x1, y1 = (int(float(row[k])) for k in ("x0", "y0", "x1", "y1"))
        except (KeyError, TypeError, ValueError):
            bad += 1
            continue
        if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
            bad += 1
            continue
        boxes[row["file"]].append((x0, y0, x1, y1))
    if bad:
        log.warning("%s: skipped %d row(s) that are not boxes x0 < x1, y0 < y1 in pixels", path, bad)
    return dict(boxes)


def _annotate(samples: list[Sample], root: Path, group_column: str) -> list[Sample]:
    groups, boxes = read_groups(root, group_column), read_boxes(root)
    if groups:
        log.info(
            "%s: %d frames in %d groups (frames.csv column %s) share their split",
            root,
            sum(1 for s in samples if s.path in groups),
            len(set(groups.values())),
            group_column,
        )
    out = []
    for s in samples:
        known = None if boxes is None else tuple(boxes.get(s.path, ())) if s.label == 1 else ()
        out.append(replace(s, group=groups.get(s.path, ""), boxes=known))
    return out


def _class_names(mapping: dict[str, int]) -> tuple[str, str]:
    by_label = {v: n for n, v in mapping.items()}
    return (by_label[0], by_label[1])


def _load_root(
    index: int, root: Path, positive: str | None, workers: int
) -> tuple[tuple[str, str], list[Sample], list[tuple[str, str]], bool]:
    _require_dir(root)
    presplit = [s for s in SPLITS if (root / s).is_dir()]
    if presplit:
        missing = [s for s in SPLITS if s not in presplit]
        if missing:
            raise UsageError(
                f"{root} looks pre-split but lacks {', '.join(s + '/' for s in missing)}; provide train/, val/ and "
                "test/"
            )
        mappings = {s: resolve_classes(root / s, positive) for s in SPLITS}
        if len({tuple(sorted(m.items())) for m in mappings.values()}) != 1:
            raise UsageError(f"train/, val/ and test/ in {root} hold different class folders; use the same two in each")
        mapping = mappings["train"]
        entries = [(root / s / name, label, s) for s in SPLITS for name, label in mapping.items()]
    else:
        mapping = resolve_classes(root, positive)
        entries = [(root / name, label, "") for name, label in mapping.items()]
    samples, skipped = scan(index, root, entries, workers)
    names = _class_names(mapping)
    _require_images(root, samples, names, presplit)
    return names, samples, skipped, bool(presplit)


def load_for_training(
    roots: list[str | Path],
    positive: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    workers: int = 4,
    group_column: str = "segment",
    folds: int = 0,
    fold: int = 0,
) -> LabelledFolder:
    paths = [Path(r).absolute() for r in roots]
    if len(set(paths)) != len(paths):
        raise UsageError("the same --data folder is given twice; give each root once")
    all_samples, all_skipped, names = [], [], None
    for i, root in enumerate(paths):
        root_names, samples, skipped, presplit = _load_root(i, root, positive, workers)
        names = names or root_names
        samples = _annotate(samples, root, group_column)
        if presplit and folds:
            raise UsageError(f"--cv needs folders to split; {root} is already split into train/, val/ and test/")
        if not presplit:
            samples = split_samples(samples, val_fraction, test_fraction, seed, folds, fold)
        elif _cross_split_duplicates(samples):
            log.warning(
                "%d image(s) appear byte-identical in more than one split of %s; their metrics will be optimistic",
                _cross_split_duplicates(samples),
                root,
            )
        all_samples += samples
        all_skipped += skipped
    return LabelledFolder(paths, names, all_samples, all_skipped)


def load_for_evaluation(root: str | Path, class_names: tuple[str, str], workers: int = 4) -> LabelledFolder:
    """Every image under the class folders is a test image; one class alone is allowed."""
    root = Path(root).absolute()
    _require_dir(root)
    if set(SPLITS) <= set(_subdirs(root)):
        entries = [
            (root / s / n, label, "test")
            for s in SPLITS
            for n, label in resolve_eval_classes(root / s, class_names).items()
        ]
    else:
        entries = [(root / n, label, "test") for n, label in resolve_eval_classes(root, class_names).items()]
    samples, skipped = scan(0, root, entries, workers)
    if not samples:
        raise UsageError(f"no readable images under {root} ({len(skipped)} file(s) skipped as unreadable)")
    return LabelledFolder([root], tuple(class_names), _annotate(samples, root, "segment"), skipped)


def _require_images(root: Path, samples: list[Sample], names: tuple[str, str], presplit: list[str]) -> None:
    if not samples:
        raise UsageError(f"no readable images under {root}; put photos in {names[0]}/ and {names[1]}/")
    for label, name in enumerate(names):
        for split in presplit or [""]:
            if not any(s.label == label and s.split == split for s in samples):
                where = f"{root}/{split + '/' if split else ''}{name}"
                raise UsageError(f"class folder {where} has no readable images; add photos or remove the folder")


def _cross_split_duplicates(samples: list[Sample]) -> int:
    splits = defaultdict(set)
    for s in samples:
        splits[s.sha256].add(s.split)
    return sum(1 for v in splits.values() if len(v) > 1)


def _union_groups(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Groups that keep both frames.csv groups and byte-identical files together."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s in samples:
        parent[find("h:" + s.sha256)] = find("g:" + s.group) if s.group else find("h:" + s.sha256)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[find("h:" + s.sha256)].append(s)
    return groups


def split_samples(
    samples: list[Sample], val_fraction: float, test_fraction: float, seed: int, folds: int = 0, fold: int = 0
) -> list[Sample]:
    """A seeded split in which byte-identical files, and frames of one group, always share a split.

    Without groups it is stratified by label. With groups (road segments, whose neighbouring frames
    are near copies) it searches seeded assignments of whole groups for the one closest to the
    fractions that gives val and test both classes, each split taking at most its fraction of the
    groups (rounded up) so that training keeps as many groups as it can. The split depends on the files' bytes, the
    groups and the seed, not on listing order or where the folder lives.

    With `folds` (cross-validation), the groups are dealt into that many balanced folds; fold number
    `fold` (1-based) is the test split, and `val_fraction` of the rest, whole groups again, validates.
    """
    groups = _union_groups(samples)
    conflicts = [h for h, g in groups.items() if len({s.label for s in g}) > 1 and not any(s.group for s in g)]
    if conflicts:
        log.warning("%d identical image(s) carry both labels; they are kept, in one split", len(conflicts))
    keys = sorted(groups, key=lambda k: min(s.sha256 for s in groups[k]))
    grouped = any(len(g) > 1 and any(s.group for s in g) for g in groups.values())
    assign = _grouped if grouped else _stratified
    if folds:
        of = assign_folds(keys, groups, folds, seed, grouped)
        assigned = {k: "test" for k in keys if of[k] == fold}
        assigned |= assign([k for k in keys if of[k] != fold], groups, [("val", val_fraction)], seed)
    else:
        assigned = assign(keys, groups, [("test", test_fraction), ("val", val_fraction)], seed)
    by_hash = {s.sha256: assigned[k] for k in keys for s in groups[k]}
    return [replace(s, split=by_hash[s.sha256]) for s in sorted(samples, key=lambda s: s.path)]


def assign_folds(
    keys: list[str], groups: dict[str, list[Sample]], folds: int, seed: int, grouped: bool, trials: int = 2000
) -> dict[str, int]:
    """Deal whole groups into `folds` folds (1-based), seeded and balanced.

    Ungrouped files are dealt per label, so each fold keeps the class balance. Groups (roads) are
    placed one by one into the emptiest fold, in many seeded orders, keeping the assignment whose
    folds are closest in size, pothole share and number of groups and each hold both classes where possible.
    """
    if len(keys) < folds:
        what = "groups (frames.csv column --group-column)" if grouped else "distinct images"
        raise UsageError(f"--cv {folds} needs at least {folds} {what}; a data root has only {len(keys)}")
    rng = random.Random(f"{seed}:folds")
    if not grouped:
        of: dict[str, int] = {}
        for label in sorted({g[0].label for g in groups.values()}):
            mine = [k for k in keys if groups[k][0].label == label]
            rng.shuffle(mine)
            for i, k in enumerate(mine):
                of[k] = 1 + i % folds
        return of
    n = sum(len(g) for g in groups.values())
    rate = sum(s.label for g in groups.values() for s in g) / n
    best: tuple[float, dict[str, int]] | None = None
    for _ in range(trials):
        order = keys[:]
        rng.shuffle(order)
        size, positives, of = [0] * folds, [0] * folds, {}
        empty = list(range(folds))
        rng.shuffle(empty)
        for k in order:
            f = empty.pop() if empty else min(range(folds), key=lambda i: (size[i], rng.random()))
            of[k] = f + 1
            size[f] += len(groups[k])
            positives[f] += sum(s.label for s in groups[k])
        count = [sum(1 for f in of.values() if f == i + 1) for i in range(folds)]
        # equal group counts too: a fold of many small groups would leave only big ones to validate on
        cost = sum(
            abs(s - n / folds) / (n / folds) + abs(p / s - rate) + abs(c - len(keys) / folds) / (len(keys) / folds)
            for s, p, c in zip(size, positives, count)
        )
        cost += 10 * sum(1 for s, p in zip(size, positives) if not 0 < p < s)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, of)
    assert best is not None
    return best[1]


def _stratified(
    keys: list[str], groups: dict[str, list[Sample]], fractions: list[tuple[str, float]], seed: int
) -> dict[str, str]:
    rng = random.Random(seed)
    assigned: dict[str, str] = {}
    for label in sorted({s.label for g in groups.values() for s in g}):
        # a group belongs to the stratum of its first file's label
        mine = [k for k in keys if groups[k][0].label == label]
        rng.shuffle(mine)
        total = sum(len(groups[k]) for k in mine)
        targets = {name: round(total * fraction) for name, fraction in fractions}
        filled = dict.fromkeys(targets, 0)
        for k in mine:
            split = next((name for name in targets if filled[name] < targets[name]), "train")
            if split != "train":
                filled[split] += len(groups[k])
            assigned[k] = split
    return assigned


def _grouped(
    keys: list[str],
    groups: dict[str, list[Sample]],
    fractions: list[tuple[str, float]],
    seed: int,
    trials: int = 500,
) -> dict[str, str]:
    rng = random.Random(seed)
    n = sum(len(groups[k]) for k in keys)
    rate = sum(s.label for k in keys for s in groups[k]) / max(n, 1)
    best: tuple[float, dict[str, str]] | None = None
    for _ in range(trials):
        order = keys[:]
        rng.shuffle(order)
        assigned: dict[str, str] = {}
        cost = 0.0
        for split, fraction in fractions:
            target, have, positives, taken = n * fraction, 0, 0, 0
            # a share of the frames is also at most that share of the groups (as in scikit-learn's
            # GroupShuffleSplit), so many small roads cannot all leave training for validation
            most = max(1, math.ceil(fraction * len(keys)))
            for k in order:
                if k in assigned or have >= target or have + len(groups[k]) > 1.3 * target or taken >= most:
                    continue
                taken += 1
                assigned[k] = split
                have += len(groups[k])
                positives += sum(s.label for s in groups[k])
            both = 0 < positives < have
            cost += abs(have - target) / target + (0 if both else 10) + abs(positives / max(have, 1) - rate)
        if best is None or cost < best[0]:
            best = (cost, assigned)
    assigned = best[1] if best else {}
    return {k: assigned.get(k, "train") for k in keys}


def _boxes_text(boxes: tuple[Box, ...] | None) -> str:
    if boxes is None:
        return "?"
    return "|".join(" ".join(str(v) for v in b) for b in boxes)


def _boxes_parse(text: str) -> tuple[Box, ...] | None:
    if text == "?":
        return None
    return tuple(tuple(int(v) for v in part.split()) for part in text.split("|") if part)  # type: ignore[misc]


def manifest_text(samples: list[Sample], class_names: tuple[str, str]) -> str:
    buf = io.StringIO()
    writer = csvcells.writer(buf)
    writer.writerow(MANIFEST_COLUMNS)
    for s in sorted(samples, key=lambda s: (s.root, s.path)):
        writer.writerow([s.root, s.path, class_names[s.label], s.split, s.sha256, s.group, _boxes_text(s.boxes)])
    return buf.getvalue()


def manifest_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def read_manifest(path: str | Path, class_names: tuple[str, str]) -> list[Sample]:
    """The samples of a split.csv; a damaged manifest is a UsageError, not a crash later."""
    labels = {name: i for i, name in enumerate(class_names)}
    rows = [{k: csvcells.unescape(v) for k, v in r.items()} for r in _read_csv(Path(path))]
    samples = []
    try:
        for r in rows:
            samples.append(
                Sample(
                    int(r["root"]),
                    r["path"],
                    labels[r["label"]],
                    r["sha256"],
                    r["split"],
                    r.get("group", ""),
                    _boxes_parse(r.get("boxes", "?")),
                )
            )
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(
            f"{path} is damaged ({type(e).__name__}: {e}); it must have the columns {', '.join(MANIFEST_COLUMNS)}"
        ) from None
    if not samples or any(s.split not in SPLITS for s in samples):
        raise UsageError(f"{path} is damaged: it lists no images, or a split other than {', '.join(SPLITS)}")
    return samples
