"""Clean stage: quarantine what must not be trained on, with a reason, and normalize the rest once.

Reads data/manifest.csv (validate stage) and data.root, and writes
    data/clean/images/<path>   every kept image as upright 8-bit sRGB, at most clean.max_side
    data/clean/kept.csv        path, label, split, file, sha256, duplicate_group
    data/clean/quarantine.csv  path, label, reason, detail   (one row per dropped file)
Nothing under data.root is touched: dropped files stay where they are, listed with their reason.
"""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.common.cli import run_stage
from tasks.common.config import Params, UserError
from tasks.common.parallel import map_chunks
from tasks.common.paths import CLEAN_DIR, CLEAN_IMAGES_DIR, KEPT_CSV, MANIFEST_CSV, QUARANTINE_CSV
from tasks.data.images import shrink, to_rgb
from tasks.data.layout import resolve_root
from tasks.data.manifest import read_manifest

PARAMS = ["data.root", "clean", "validate.allowed_formats", "validate.min_width", "validate.min_height"]

KEPT_COLUMNS = ["path", "label", "split", "file", "sha256", "duplicate_group"]

# Quarantine reasons, in the order they are tested (the first that applies is recorded):
# hidden_file, symlink, not_an_image, too_many_pixels, undecodable (from the manifest's problem
# column, mapped below), no_class_folder, unsupported_format, too_small, label_conflict,
# exact_duplicate, near_duplicate. docs/data_quality.md says when each applies.
PROBLEM_REASON = {
    "symlink_leaves_root": "symlink", "symlinked_folder": "symlink", "broken_symlink": "symlink",
    "empty": "not_an_image", "not_an_image": "not_an_image", "over_pixel_limit": "too_many_pixels",
    "corrupt": "undecodable", "unreadable": "undecodable",
}
LOSSY = {"JPEG", "MPO"}  # re-encoded as JPEG (quality 95); everything else becomes PNG (lossless)


# --- decisions ----------------------------------------------------------------------------------


def file_reasons(manifest: pd.DataFrame, params: Params) -> pd.DataFrame:
    """(reason, detail) per row for problems of the file itself; empty reason: usable so far."""
    p = params.validate_
    reasons = []
    for row in manifest.itertuples():
        if row.hidden:
            reasons.append(("hidden_file", "hidden; rename it without the leading dot to use it"))
        elif row.problem:
            reasons.append((PROBLEM_REASON[row.problem], row.error))
        elif not row.label:
            reasons.append(("no_class_folder", "file lies outside any class folder"))
        elif row.format not in p.allowed_formats:
            reasons.append(("unsupported_format", f"{row.format} is not in validate.allowed_formats"))
        elif row.width < p.min_width or row.height < p.min_height:
            reasons.append(("too_small", f"{row.width}x{row.height} px, below {p.min_width}x{p.min_height}"))
        else:
            reasons.append(("", ""))
    return pd.DataFrame(reasons, columns=["reason", "detail"], index=manifest.index)


def duplicate_reasons(usable: pd.DataFrame, params: Params) -> pd.DataFrame:
    """(reason, detail) for usable rows that conflict with or copy another usable image.

    In a group whose files carry different labels nobody knows the right one: all are dropped.
    Otherwise the largest image is kept (then the first path) and the others are copies of it.
    """
    keep_exact, keep_near = not params.clean.drop_exact_duplicates, not params.clean.drop_near_duplicates
    out = pd.DataFrame({"reason": "", "detail": ""}, index=usable.index)
    pixels = usable["width"].astype("int64") * usable["height"].astype("int64")
    ranked = usable.assign(pixels=pixels).sort_values(["pixels", "path"], ascending=[False, True])
    for _, group in ranked[ranked.duplicated("duplicate_group", keep=False)].groupby("duplicate_group"):
        labels = sorted(set(group["label"]))
        if len(labels) > 1:
            out.loc[group.index] = ("label_conflict", f"same image in classes {', '.join(labels)}: "
                                    + ", ".join(sorted(group["path"])))
            continue
        best = group.iloc[0]
        for index, row in group.iloc[1:].iterrows():
            if row["sha256"] == best["sha256"]:
                if not keep_exact:
                    out.loc[index] = ("exact_duplicate", f"same bytes as {best['path']}")
            elif not keep_near:
                bits = bin(int(row["phash"], 16) ^ int(best["phash"], 16)).count("1")
                out.loc[index] = ("near_duplicate", f"near copy of {best['path']} (perceptual hash {bits} "
                                  f"bits apart; {row['width']}x{row['height']} vs {best['width']}x{best['height']} px)")
    return out


# --- normalization ------------------------------------------------------------------------------


def clean_name(path: str, fmt: str) -> str:
    """Where a normalized image goes: its own path, with the suffix of the format written."""
    suffix = ".jpg" if fmt in LOSSY else ".png"
    keep = {".jpg", ".jpeg"} if fmt in LOSSY else {".png"}
    return path if Path(path).suffix.lower() in keep else path + suffix


def normalize_one(source: Path, target: Path, orientation: int, background, max_side: int) -> str:
    """Write source as upright 8-bit sRGB; returns "copied" or "converted".

    A file that is already what training wants (8-bit RGB JPEG/PNG, upright, one frame, no
    colour profile, small enough) is copied byte for byte, so JPEGs are not re-compressed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as img:
        as_is = (
            img.format in ("JPEG", "PNG") and img.mode == "RGB" and getattr(img, "n_frames", 1) == 1
            and not img.info.get("icc_profile") and orientation == 1
            and (not max_side or max(img.size) <= max_side)
            and not (img.format == "PNG" and img.info.get("transparency") is not None)
        )
        if as_is:
            shutil.copyfile(source, target)
            return "copied"
        img.load()
        fmt = img.format
        rgb = shrink(to_rgb(img, background), max_side)
    if fmt in LOSSY:
        rgb.save(target, "JPEG", quality=95, subsampling=0)
    else:
        rgb.save(target, "PNG", compress_level=1)  # fast; the sizes differ little for photos
    return "converted"


def normalize_chunk(jobs: list[tuple[str, str, int]], root: Path, out_dir: Path, background, max_side: int) -> list[str]:
    results = []
    for path, name, orientation in jobs:
        try:
            results.append(normalize_one(root / path, out_dir / name, orientation, background, max_side))
        except Exception as err:  # noqa: BLE001  reported per file, as the manifest does
            results.append(f"failed: {type(err).__name__}: {str(err)[:100]}")
    return results


# --- stage --------------------------------------------------------------------------------------


def run(params: Params, workdir: Path = Path(".")) -> dict:
    if not (workdir / MANIFEST_CSV).is_file():
        raise UserError(f"{MANIFEST_CSV} not found; run the validate stage first (dvc repro validate)")
    manifest = read_manifest(workdir / MANIFEST_CSV)
    decisions = file_reasons(manifest, params)
    usable = decisions["reason"] == ""
    decisions.loc[usable] = duplicate_reasons(manifest[usable], params)

    kept = manifest[decisions["reason"] == ""].copy()
    kept["file"] = [str(CLEAN_IMAGES_DIR / clean_name(p, f)) for p, f in zip(kept["path"], kept["format"])]
    out_dir = workdir / CLEAN_IMAGES_DIR
    if out_dir.exists():
        shutil.rmtree(out_dir)  # images of an earlier run would otherwise linger
    c = params.clean
    # The manifest already knows each image's EXIF orientation: no second EXIF parse here.
    jobs = [(p, clean_name(p, f), int(o)) for p, f, o in zip(kept["path"], kept["format"], kept["orientation"])]
    outcome = pd.Series(map_chunks(
        partial(normalize_chunk, root=resolve_root(params, workdir), out_dir=out_dir,
                background=tuple(c.background), max_side=c.max_side),
        jobs, desc="clean: normalizing images",
    ), index=kept.index, dtype=str)
    failed = outcome.str.startswith("failed")
    decisions.loc[failed[failed].index, "reason"] = "undecodable"
    decisions.loc[failed[failed].index, "detail"] = outcome[failed].str.removeprefix("failed: ")
    kept = kept[~failed]
    if kept["label"].nunique() < 2:
        raise UserError("fewer than two classes have usable images after cleaning; see data/clean/quarantine.csv")

    quarantine = manifest.loc[decisions["reason"] != "", ["path", "label"]].join(decisions)
    (workdir / CLEAN_DIR).mkdir(parents=True, exist_ok=True)
    kept[KEPT_COLUMNS].to_csv(workdir / KEPT_CSV, index=False)
    quarantine.to_csv(workdir / QUARANTINE_CSV, index=False)
    return {
        "kept": len(kept),
        "copied": int((outcome == "copied").sum()),
        "converted": int((outcome == "converted").sum()),
        "quarantined": len(quarantine),
        "reasons": quarantine["reason"].value_counts().to_dict(),
    }


if __name__ == "__main__":
    run_stage("clean", run)
