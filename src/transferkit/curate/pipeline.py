"""``curate``: build a retrieval-augmented transfer set from a generic image pool.

Steps (one :class:`CurateConfig` per run, loadable from YAML):

1. embed the labeled target images (the queries; optionally several crops each) and every crop of every
   gallery image with the same model, through memory-mapped, resumable embedding stores;
2. index the gallery (exact, IVF or IVF-PQ; recall@k against exact search is measured on the queries);
3. search each query crop, merge a query's crops into one candidate list, and fill equal per-query
   quotas (no duplicates, near-duplicate removal, the test-leakage guard; see :mod:`.select`);
4. write the transfer-set manifest (:mod:`.manifest`) and a JSON report next to it.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import CorruptImageError, ImageDataset, open_dataset
from ..reporting import write_json
from .crops import CropDataset, CropGrid
from .embed import EmbeddingStore, GalleryEmbeddings, embed_dataset
from .index import ExactIndex, IndexConfig, build_index, recall_at_k
from .manifest import ManifestRow, item_ref, write_manifest
from .select import Selection, merge_candidates, select_balanced, select_random

__all__ = ["CurateConfig", "CurationResult", "GallerySource", "curate"]

# A source without native splits is split train/test with this seed whatever the run's seed, as
# `transferkit distill` does: the leakage guard then covers exactly the images distill evaluates on.
SPLIT_SEED = 0


@dataclass
class GallerySource:
    """One gallery dataset: a spec ``open_dataset`` accepts, its split, and optional seeded subsampling
    (``per_class`` items per class, then at most ``max_items`` items)."""

    spec: str
    split: str | None = "all"
    per_class: int | None = None
    max_items: int | None = None

    def open(self, seed: int = 0) -> ImageDataset:
        ds = open_dataset(self.spec, split=self.split, per_class=self.per_class, seed=seed)
        if self.max_items is not None and len(ds) > self.max_items:
            keep = np.sort(np.random.default_rng(seed).choice(len(ds), self.max_items, replace=False))
            ds = ds.subset(keep, note=f"max_items={self.max_items}, seed={seed}")
        return ds

    def parts(self, seed: int = 0) -> list[tuple[ImageDataset, list[Any] | None]]:
        """The gallery's datasets, each with its precomputed embedding stores (None: embed it).

        A WebDataset shard or brace pattern gives one dataset per tar shard (corrupt samples skipped and
        counted); a precomputed-embedding folder gives its images and its ``.npy`` stores; anything else is
        one dataset that ``open_dataset`` reads. ``per_class`` does not apply to the unlabeled formats,
        ``max_items`` to none but the last kind.
        """
        from .shards import is_precomputed_folder, is_shard_spec, open_precomputed, open_shard_gallery

        if is_precomputed_folder(self.spec):
            images, stores = open_precomputed(self.spec)
            return [(images, list(stores))]
        if is_shard_spec(self.spec):
            return [(ds, None) for ds in open_shard_gallery(self.spec)]
        return [(self.open(seed), None)]

    @classmethod
    def coerce(cls, value: str | dict[str, Any] | GallerySource) -> GallerySource:
        if isinstance(value, GallerySource):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"gallery entry {value}: unknown key(s) {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"gallery entries are paths or mappings, got {value!r}")


@dataclass
class CurateConfig:
    """Everything one curation run needs.

    ``budget``: transfer-set size (crops). ``strategy``: ``'balanced'`` (query-balanced crop retrieval) or
    ``'random'`` (uniform crops from the same pool, the baseline to compare with). ``test``: the images the
    transfer set must not leak (``'auto'``: the query dataset's ``test_split`` when it has one;
    ``None``/``'none'``: no guard; ``test_per_class`` subsamples it, e.g. to match an evaluation subset).
    ``candidates``: neighbours searched per query crop (``None``: ``4 * quota + 16``, grown automatically
    when a query's list runs out). Thresholds are cosine similarities (``None`` disables); their meaning
    depends on the embedding model (on EuroSAT with MobileNet-v1 0.25, distinct crops reach 0.999), so
    check the report. Gallery images byte-identical to a test image (same content digest) are always
    excluded when a test set is known, whatever the threshold.
    """

    queries: str
    gallery: list[GallerySource]
    budget: int
    model: Any  # a model spec string (anything `transferkit extract` accepts), or an nn.Module
    out: str = "transfer_set.csv"
    strategy: str = "balanced"
    query_split: str | None = "train"
    query_per_class: int | None = None
    test: str | None = "auto"
    test_split: str = "test"
    test_per_class: int | None = None
    scales: tuple[float, ...] = (1.0, 0.5)
    grid: int | tuple[int, ...] | None = None
    query_scales: tuple[float, ...] = (1.0,)
    query_grid: int | tuple[int, ...] | None = None
    candidates: int | None = None
    dup_threshold: float | None = 0.98
    leak_threshold: float | None = 0.995
    max_per_image: int | None = None
    exclude_queries: bool = True
    index: IndexConfig = field(default_factory=IndexConfig)
    recall_k: int = 10
    layer: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)  # overrides of the model's data config (input_size, ...)
    batch_size: int = 64
    num_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str = ".transferkit_cache"
    shard_size: int = 8192
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.gallery, (str, dict, GallerySource)):
            self.gallery = [self.gallery]
        self.gallery = [GallerySource.coerce(g) for g in self.gallery]
        if not self.gallery:
            raise ValueError("curate needs at least one gallery dataset")
        if isinstance(self.index, dict):
            self.index = IndexConfig(**self.index)
        g = CropGrid.parse(self.scales, self.grid)
        self.scales, self.grid = g.scales, g.grid
        g = CropGrid.parse(self.query_scales, self.query_grid)
        self.query_scales, self.query_grid = g.scales, g.grid
        if int(self.budget) < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        self.budget = int(self.budget)
        for name in ("dup_threshold", "leak_threshold"):
            v = getattr(self, name)
            if v is not None and not -1.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} is a cosine similarity in [-1, 1], got {v}")
        if self.strategy not in ("balanced", "random"):
            raise ValueError("strategy must be 'balanced' (query-balanced retrieval) or 'random', "
                             f"got {self.strategy!r}")
        if self.candidates is not None and self.candidates < 1:
            raise ValueError("candidates must be >= 1")
        if self.max_per_image is not None and self.max_per_image < 1:
            raise ValueError(f"max_per_image (--max-per-image) must be >= 1 or unset, got {self.max_per_image}")

    @property
    def gallery_grid(self) -> CropGrid:
        return CropGrid.parse(self.scales, self.grid)

    @property
    def queries_grid(self) -> CropGrid:
        return CropGrid.parse(self.query_scales, self.query_grid)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurateConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown curate option(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CurateConfig:
        import yaml

        doc = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a mapping of curate options")
        base = Path(path).resolve().parent

        def rebase(spec: Any) -> Any:  # dataset paths relative to the YAML file's folder (when they exist there)
            if isinstance(spec, str) and not Path(spec).expanduser().is_absolute() and (base / spec).exists():
                return str((base / spec).resolve())
            return spec

        for key in ("queries", "test"):
            if key in doc:
                doc[key] = rebase(doc[key])
        gal = doc.get("gallery")
        if isinstance(gal, (str, dict)):
            gal = [gal]
        if isinstance(gal, list):
            doc["gallery"] = [rebase(g) if isinstance(g, str) else
                              (dict(g, spec=rebase(g["spec"])) if isinstance(g, dict) and "spec" in g else g)
                              for g in gal]
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a model passed as an ``nn.Module`` is named by its class)."""
        d = dataclasses.asdict(self)
        if not isinstance(self.model, str):
            d["model"] = f"<{type(self.model).__name__}>"
        return d


@dataclass
class CurationResult:
    manifest: Path
    rows: list[ManifestRow]
    selection: Selection
    report: dict[str, Any]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _embed(cfg: CurateConfig, ds: ImageDataset, desc: str) -> EmbeddingStore:
    return embed_dataset(cfg.model, ds, cache_dir=cfg.cache_dir, shard_size=cfg.shard_size,
                         batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=cfg.device,
                         precision=cfg.precision, layer=cfg.layer, progress=cfg.progress, desc=desc,
                         **cfg.preprocess)


def _ref_key(ref: tuple[str, str, str]) -> tuple[str, ...]:
    src, split, item = ref
    return (src, split, item) if item.startswith("#") else (src, item)


def _open_test(cfg: CurateConfig, queries: ImageDataset) -> ImageDataset | None:
    t = cfg.test
    if t is None or str(t).lower() == "none":
        return None
    if str(t).lower() == "auto":
        base = queries
        while hasattr(base, "base"):
            base = base.base
        if cfg.test_split not in (base.native_splits or []):
            seeded = {"train", "test"}
            if cfg.query_split in seeded and cfg.test_split in seeded - {cfg.query_split}:
                # the queries are a seeded split of a source without native splits: guard its complement,
                # the images `transferkit distill` evaluates on with the same seed
                return open_dataset(cfg.queries, split=cfg.test_split, per_class=cfg.test_per_class, seed=cfg.seed,
                                    split_seed=SPLIT_SEED)
            warnings.warn(f"{cfg.queries}: no native {cfg.test_split!r} split, so no leakage guard "
                          "(--test / test= names the target's test images)", RuntimeWarning, stacklevel=3)
            return None
        return open_dataset(cfg.queries, split=cfg.test_split, per_class=cfg.test_per_class, seed=cfg.seed)
    # a named test set: its test_split when it has that split natively, else all of it (never a seeded 20 %)
    whole = open_dataset(t, split="all")
    split = cfg.test_split if cfg.test_split in (whole.native_splits or []) else "all"
    return open_dataset(t, split=split, per_class=cfg.test_per_class, seed=cfg.seed)


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def __call__(self, name: str) -> _Timer:
        self._name, self._t0 = name, time.perf_counter()
        return self

    def __enter__(self) -> _Timer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.t[self._name] = round(time.perf_counter() - self._t0, 4)


def _image_mask(gsets: list[ImageDataset], gallery: GalleryEmbeddings, S: int, key: Any, wanted: set) -> np.ndarray:
    """Gallery rows (all ``S`` crops) of the images whose ``key(dataset, index)`` is in ``wanted``."""
    mask = np.zeros(gallery.n, bool)
    for k, d in enumerate(gsets):
        for i in range(len(d)):
            if key(d, i) in wanted:
                lo = int(gallery.offsets[k]) + i * S
                mask[lo:lo + S] = True
    return mask


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def curate(cfg: CurateConfig) -> CurationResult:
    """Run one curation (see the module docstring); returns the manifest path, rows, selection and report."""
    timer = _Timer()
    # 1. queries
    try:
        qds = open_dataset(cfg.queries, split=cfg.query_split, per_class=cfg.query_per_class, seed=cfg.seed,
                           split_seed=SPLIT_SEED)
    except FileNotFoundError as exc:  # say which of queries / gallery / test it was
        raise FileNotFoundError(f"queries: {exc}") from exc
    qgrid = cfg.queries_grid
    qcrops = CropDataset(qds, qgrid)
    with timer("embed_queries"):
        qstore = _embed(cfg, qcrops, "embed queries")
    qvec = np.asarray(qstore.emb)
    q_owner = np.arange(len(qcrops)) // len(qgrid)
    q_ok = qstore.valid
    n_queries = len(qds)
    if not q_ok.any():
        raise ValueError(f"{cfg.queries}: none of the {n_queries} query images could be read")
    # 2. gallery
    ggrid = cfg.gallery_grid
    S = len(ggrid)
    gsets, stores, embed_s = [], [], []
    src_rows: list[tuple[GallerySource, ImageDataset, Any, float]] = []
    unusable: list[str] = []  # gallery parts without one readable image: skipped, said once each
    for g in cfg.gallery:
        try:
            parts = g.parts(cfg.seed)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"gallery: {exc}") from exc
        for ds, pre in parts:
            t0 = time.perf_counter()
            if len(ds) == 0:
                why = "; ".join(getattr(ds, "errors", [])[:1]) or "no readable images"
                unusable.append(f"{ds.source} ({why})")
                continue
            if pre is not None:  # precomputed embeddings: one per image, no crops
                if S != 1:
                    raise ValueError(f"{g.spec}: precomputed embeddings are whole-image; use --scales 1 "
                                     "(scales: [1.0] in a config)")
                offs = np.cumsum([0] + [st.n for st in pre])
                if int(offs[-1]) != len(ds):
                    raise ValueError(f"{g.spec}: {len(ds)} images but its embedding shards hold {offs[-1]} rows")
                gsets.extend(ds if len(pre) == 1 else ds.subset(np.arange(offs[j], offs[j + 1]))
                             for j in range(len(pre)))
                stores.extend(pre)
                src_rows.append((g, ds, pre[0], 0.0))
                continue
            st = _embed(cfg, CropDataset(ds, ggrid), f"embed {Path(str(ds.source)).name}")
            if not st.valid.any():
                unusable.append(f"{ds.source} (none of its {len(ds)} images could be read)")
                continue
            t = time.perf_counter() - t0
            embed_s.append(t)
            gsets.append(ds)
            stores.append(st)
            src_rows.append((g, ds, st, t))
    if unusable:
        more = f" (and {len(unusable) - 3} more)" if len(unusable) > 3 else ""
        if not stores:
            raise ValueError(f"the gallery has no readable images: {'; '.join(unusable[:3])}{more}")
        warnings.warn(f"skipped {len(unusable)} gallery part(s) without readable images: "
                      f"{'; '.join(unusable[:3])}{more}", RuntimeWarning, stacklevel=2)
    gallery = GalleryEmbeddings(stores)
    if qstore.dim != gallery.dim:
        raise ValueError(f"the gallery's embeddings have {gallery.dim} dimensions but the model gives {qstore.dim} "
                         "(precomputed with a different model?)")
    img_off = np.cumsum([0] + [len(d) for d in gsets])
    group = np.concatenate([img_off[k] + np.arange(len(d) * S) // S for k, d in enumerate(gsets)])
    # query images present in the gallery (the same item, or a byte-identical copy) are never retrieved;
    # byte-identical copies of test images neither
    exclude = np.zeros(gallery.n, bool)
    if cfg.exclude_queries:
        exclude = _image_mask(gsets, gallery, S, lambda d, i: _ref_key(item_ref(d, i)),
                              {_ref_key(item_ref(qds, i)) for i in range(len(qds))})
        exclude |= _image_mask(gsets, gallery, S, lambda d, i: d.item_digests()[i], set(qds.item_digests()))
    n_self = int(exclude.sum()) // S
    try:
        tds = _open_test(cfg, qds)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"test (leakage guard): {exc}") from exc
    tvec = None
    exact_leak = np.zeros(gallery.n, bool)
    if tds is not None:
        exact_leak = _image_mask(gsets, gallery, S, lambda d, i: d.item_digests()[i], set(tds.item_digests()))
    # leakage guard: the target's test images, cut like the gallery
    if tds is not None and cfg.leak_threshold is not None:
        with timer("embed_test"):
            tstore = _embed(cfg, CropDataset(tds, ggrid), "embed test (leakage guard)")
        tvec = np.asarray(tstore.emb)[tstore.valid]
    # 3. index + recall
    k, search_s, searched = 0, 0.0, 0
    qv = qvec[q_ok]
    qo = q_owner[q_ok]
    if cfg.strategy == "random":
        desc: dict[str, Any] = {"kind": "none (random strategy)"}
        with timer("select"):
            sel = select_random(gallery.valid, cfg.budget, vectors=gallery.take, test_vectors=tvec,
                                leak_threshold=cfg.leak_threshold, exclude=exclude | exact_leak, seed=cfg.seed)
    else:
        with timer("build_index"):
            index = build_index(gallery, cfg.index, progress=cfg.progress)
        desc = index.describe()
        if not desc.get("exact", False) and len(qv):
            desc["recall_at_k"] = {"k": cfg.recall_k, "recall": recall_at_k(
                index, ExactIndex(gallery, cfg.index.block), qv[:1000], cfg.recall_k)}
        # 4. search + balanced selection (grow the candidate lists while some query runs short)
        base_quota = math.ceil(cfg.budget / max(1, n_queries))
        k = min(cfg.candidates or (4 * base_quota + 16), max(1, index.ntotal))
        while True:
            t0 = time.perf_counter()
            sims, ids = index.search(qv, k)
            search_s += time.perf_counter() - t0
            searched += len(qv)
            cands = merge_candidates(sims, ids, qo, n_queries)
            with timer("select"):
                sel = select_balanced(cands, cfg.budget, vectors=gallery.take, dup_threshold=cfg.dup_threshold,
                                      test_vectors=tvec, leak_threshold=cfg.leak_threshold,
                                      exclude=exclude | exact_leak, group=group,
                                      max_per_image=cfg.max_per_image, seed=cfg.seed)
            if not len(sel.short) or k >= index.ntotal or cfg.candidates is not None:
                break
            k = min(index.ntotal, k * 4)
    if not len(sel.gallery_ids):  # never exit 0 with an empty transfer set
        raise ValueError(f"no gallery item could be selected: {_why_empty(gallery, exclude, exact_leak, sel)}")
    if len(sel.short):
        who = f" ({len(sel.short)} of {n_queries} queries short of their quota)" if cfg.strategy == "balanced" else ""
        warnings.warn(f"only {len(sel.gallery_ids)} of {cfg.budget} items selected{who}: the gallery ran out of "
                      "eligible items", RuntimeWarning, stacklevel=2)
    # 5. manifest rows (pixel boxes need each selected image's size)
    with timer("manifest"):
        rows = _rows(sel, gallery, gsets, ggrid, qds, cfg)
    by_source = Counter(r.source for r in rows)
    qnames = [item_ref(qds, i)[2] for i in range(n_queries)]
    report = {
        "config": cfg.to_dict(),
        "queries": {"source": qds.source, "n": n_queries, "crops_per_query": len(qgrid),
                    "classes": qds.classes, "unreadable": int((~q_ok).sum())},
        "gallery": {"sources": [{"spec": g.spec, "split": g.split, "dataset": str(d.source), "images": len(d),
                                 "crops": len(d) * S, "skipped_corrupt": int(getattr(d, "skipped", 0)),
                                 "embed_seconds": round(t, 3), "store": str(st.path)}
                                for g, d, st, t in src_rows],
                    "skipped_corrupt": int(sum(getattr(d, "skipped", 0) for _, d, _, _ in src_rows)),
                    "skipped_parts": unusable,
                    "crops_per_image": S, "crops": gallery.n, "unreadable": int((~gallery.valid).sum()),
                    "query_images_excluded": n_self},
        "leakage_guard": {"test": getattr(tds, "source", None), "test_images": len(tds) if tds is not None else 0,
                          "threshold": cfg.leak_threshold,
                          "exact_copies_images": int(exact_leak.sum() // S),
                          "excluded_crops": int(len(sel.leak_ids)),
                          "excluded_images": int(len(np.unique(group[sel.leak_ids]))) if len(sel.leak_ids) else 0},
        "index": desc,
        "search": {"candidates_per_crop": int(k), "query_crops": int(len(qv)), "seconds": round(search_s, 4),
                   "queries_per_second": round(searched / search_s, 1) if search_s > 0 else None},
        "selection": sel.summary(),
        "composition": {s: {"count": c, "fraction": round(c / max(1, len(rows)), 4)} for s, c in by_source.items()},
        "per_class_composition": _per_class(sel, rows, qds),
        "timings": timer.t,
        "short_queries": [qnames[i] for i in sel.short[:50]] if cfg.strategy == "balanced" else [],
    }
    meta = {"model": report["config"]["model"], "strategy": cfg.strategy, "budget": cfg.budget,
            "queries": qds.source, "n": len(rows),
            "crops": ggrid.describe(), "index": desc.get("kind"), "seed": cfg.seed}
    from ..features.distributed import dist_context

    out = Path(cfg.out)
    ctx = dist_context()
    if ctx.is_main:  # under torchrun every rank selects the same set; rank 0 writes it
        out = write_manifest(cfg.out, rows, meta)
        write_json(Path(out).with_suffix(".report.json"), report)
    out = Path(ctx.broadcast(str(out)))  # the path written (it may gain a suffix), once it exists for every rank
    return CurationResult(out, rows, sel, report)


def _why_empty(gallery: GalleryEmbeddings, exclude: np.ndarray, exact_leak: np.ndarray, sel: Selection) -> str:
    """Where the gallery's crops went when none was selected (for the one-line error)."""
    valid = gallery.valid
    parts = [f"{gallery.n} crops", f"{int((~valid).sum())} unreadable",
             f"{int((exclude & valid).sum())} are query images or copies of them",
             f"{int((exact_leak & valid & ~exclude).sum())} copies of test images",
             f"{len(sel.leak_ids)} near test images"]
    return ", ".join(parts) + " (a gallery other than the queries' own dataset, or --test none, may help)"


def _rows(sel: Selection, gallery: GalleryEmbeddings, gsets: list[ImageDataset], grid: CropGrid,
          qds: ImageDataset, cfg: CurateConfig) -> list[ManifestRow]:
    from tqdm.auto import tqdm

    S = len(grid)
    slots = grid.slots()
    qnames = [item_ref(qds, i)[2] for i in range(len(qds))]
    sizes: dict[tuple[int, int], tuple[int, int]] = {}
    src_of = np.searchsorted(gallery.offsets, sel.gallery_ids, side="right") - 1
    rows = []
    for j in tqdm(range(len(sel.gallery_ids)), desc="manifest", disable=not cfg.progress, leave=False):
        g = int(sel.gallery_ids[j])
        k = int(src_of[j])
        local = g - int(gallery.offsets[k])
        img, slot = local // S, slots[local % S]
        if (k, img) not in sizes:
            try:
                sizes[(k, img)] = gsets[k].load(img).size
            except CorruptImageError as exc:  # e.g. a precomputed gallery whose image paths are gone
                raise ValueError(f"a selected gallery image cannot be read ({exc}); the manifest needs each "
                                 "selected image (its size, and distill reads it): check the gallery's image "
                                 "paths") from exc
        w, h = sizes[(k, img)]
        src, split, item = item_ref(gsets[k], img)
        x0, y0, x1, y1 = slot.box(w, h)
        q = int(sel.query[j])
        rows.append(ManifestRow(src, split, item, x0, y0, x1, y1, qnames[q] if q >= 0 else "",
                                float(sel.similarity[j]), int(sel.rank[j])))
    return rows


def _per_class(sel: Selection, rows: list[ManifestRow], qds: ImageDataset) -> dict[str, dict[str, int]]:
    """For each query class: how many selected items came from each gallery source."""
    out: dict[str, dict[str, int]] = {}
    for q, r in zip(sel.query.tolist(), rows):
        if q < 0:
            continue
        c = qds.classes[int(qds.targets[q])] if len(qds.classes) else "?"
        d = out.setdefault(c, {})
        d[r.source] = d.get(r.source, 0) + 1
    return out
