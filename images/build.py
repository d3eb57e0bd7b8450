"""Run a recipe (images/<name>/recipe.py) and write <out>/<name>.tar.

A recipe that sets `CACHE = True` (one that downloads a distribution, say) is
built once per version of its directory and of this builder: the archive is
kept as $HBD_CACHE/images/<name>-<key>.tar (HBD_CACHE defaults to
/var/cache/hbd, as for the guest kernel) and copied to <out> on later runs.
HBD_IMAGE_REBUILD=1 builds it again regardless.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

# images/ for build_image, and this checkout's root for the hbd modules it uses
# (stdlib only): the archive writer of this checkout, which the cache key below
# covers, not whichever hbd the running python3 has installed (if any).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from build_image import layer_from_tree, write_archive  # noqa: E402 (after the sys.path line above)

HERE = Path(__file__).resolve().parent
# What the bytes of an archive depend on besides the recipe's own directory.
BUILDER_FILES = (HERE / "build.py", HERE / "build_image.py",
                 HERE.parent / "hbd" / "services" / "image" / "archive.py")


def cache_key(recipe_dir: Path) -> str:
    """A hash of every file of the recipe's directory and of the builder."""
    h = hashlib.sha256()
    files = [p for p in sorted(recipe_dir.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    for path in [*files, *BUILDER_FILES]:
        data = path.read_bytes()
        h.update(f"{path.relative_to(HERE.parent)}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def copy_atomically(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def main() -> None:
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    recipe_path = Path(__file__).resolve().parent / name / "recipe.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", recipe_path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no recipe {recipe_path}")
    recipe = importlib.util.module_from_spec(spec)
    # registered before it runs, as importlib's docs do: dataclasses (and pickle,
    # typing) look a class's module up in sys.modules
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    ref = getattr(recipe, "REF", f"{name}:latest")
    out = out_dir / f"{name}.tar"
    cached: Path | None = None
    if getattr(recipe, "CACHE", False):
        cache_dir = Path(os.environ.get("HBD_CACHE", "/var/cache/hbd")) / "images"
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = cache_dir / f"{name}-{cache_key(recipe_path.parent)}.tar"
        meta = cached.with_suffix(".json")
        if cached.exists() and meta.exists() and os.environ.get("HBD_IMAGE_REBUILD") != "1":
            copy_atomically(cached, out)
            print(json.dumps({**json.loads(meta.read_text()), "archive": str(out),
                              "cached": str(cached)}))
            return
    work = Path(tempfile.mkdtemp(prefix=f"image-{name}-"))
    try:
        tree = work / "rootfs"
        tree.mkdir()
        recipe.build_tree(tree)
        image_id = write_archive(out, ref, [layer_from_tree(tree)], recipe.CONFIG)
        result = {"archive": str(out), "ref": ref, "id": image_id}
        if cached is not None:
            copy_atomically(out, cached)
            # written last: an archive without it is a build that did not finish
            cached.with_suffix(".json").write_text(json.dumps(result))
            for old in cached.parent.glob(f"{name}-*"):  # older versions of the recipe
                if (re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", old.stem)
                        and old.stem != cached.stem and old.suffix in (".tar", ".json")):
                    old.unlink()
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
