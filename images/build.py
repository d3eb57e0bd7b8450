"""Run a recipe (images/<name>/recipe.py) and write <out>/<name>.tar."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_image import layer_from_tree, write_archive


def main() -> None:
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    recipe_path = Path(__file__).resolve().parent / name / "recipe.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", recipe_path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no recipe {recipe_path}")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    work = Path(tempfile.mkdtemp(prefix=f"image-{name}-"))
    try:
        tree = work / "rootfs"
        tree.mkdir()
        recipe.build_tree(tree)
        ref = getattr(recipe, "REF", f"{name}:latest")
        out = out_dir / f"{name}.tar"
        image_id = write_archive(out, ref, [layer_from_tree(tree)], recipe.CONFIG)
        print(json.dumps({"archive": str(out), "ref": ref, "id": image_id}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
