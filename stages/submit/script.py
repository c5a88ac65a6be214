"""train_gpt.py: one self-contained file that repeats a submitted run, the way the records ship theirs.

The file carries golf's code for the stages it runs (``reproduce.py`` and every golf module it
imports, plus the code ``golf pack`` puts in an artifact) as base85 of an lzma-compressed JSON
{path: source}, the same code byte for byte, so the artifact it packs ships the same bundle as the
submitted runs'. Beside it, in plain view, the recipe: every resolved setting of the runs, the data
they used and the scores to expect. At start it unpacks the code into a temporary folder, imports
``stages.submit.reproduce`` from there and runs train -> quantize -> pack -> eval. The counted
code bytes are this file's real bytes.
"""

from __future__ import annotations

import ast
import base64
import json
import lzma
from pathlib import Path

from ..artifact.bundle import collect_sources
from ..artifact.verify import CODE_ROOT, installed_sources

PACKAGE = "stages"
ENTRY = "stages/submit/reproduce.py"

TEMPLATE = '''"""{title}

Made by `golf submit` from {runs} runs ({seeds_text}). Repeats one of them:

    torchrun --standalone --nproc_per_node=8 train_gpt.py    # 8 GPUs
    python train_gpt.py                                      # one process (CPU for a CPU recipe)

Environment: SEED (one of {seeds_text}; default {first_seed}); RUN_DIR (where the stage folders go;
default ./golf_run_seed<SEED>); FORCE=1 replaces golf's own stage folders there. Data: {data_text}
The code below is golf's (lzma + base85 of a JSON of its source files); RECIPE is every setting.
"""
import base64, json, lzma, os, shutil, sys, tempfile

RECIPE = json.loads(r"""
{recipe}
""")
CODE = (
{code}
)


def unpack(folder):
    files = json.loads(lzma.decompress(base64.b85decode("".join(CODE))).decode("utf-8"))
    for rel, source in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(source)


if __name__ == "__main__":
    folder = tempfile.mkdtemp(prefix="golf_code_")
    try:
        unpack(folder)
        sys.path.insert(0, folder)
        from stages.submit.reproduce import main
        sys.exit(main(RECIPE))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
'''
LINE_CHARS = 100


def shipped_sources() -> dict[str, str]:
    """{path: source} of everything train_gpt.py runs: the reproduction's import closure and the
    artifact's bundle (which ``golf pack`` reads from the code's own folder)."""
    files = {**installed_sources(with_ttt=True), **collect_sources(CODE_ROOT, [ENTRY], follow=golf_imports)}
    return dict(sorted(files.items()))


def golf_imports(root: Path, rel: str, source: str) -> list[str]:
    """Files of the golf modules ``source`` imports, relatively or as ``stages.*``, anywhere in the file."""
    package = list(Path(rel).parent.parts)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            modules = [module, *(module + [alias.name] for alias in node.names)]
        else:
            continue
        for parts in modules:
            if not parts or parts[0] != PACKAGE:
                continue
            for path in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")):
                if (root / path).is_file():
                    found.append(str(path))
    return found


def encode_sources(files: dict[str, str]) -> str:
    """base85 of lzma (strongest preset) of the sources as JSON with sorted keys: the same files give the same text."""
    raw = json.dumps(files, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return base64.b85encode(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)).decode("ascii")


def render_script(title: str, recipe: dict, files: dict[str, str]) -> str:
    """The text of train_gpt.py for a recipe (see ``reproduce.recipe_fields``) and the code it carries."""
    seeds = recipe["seeds"]
    code = encode_sources(files)
    lines = "\n".join(f'    "{code[i:i + LINE_CHARS]}"' for i in range(0, len(code), LINE_CHARS))
    return TEMPLATE.format(
        title=title.replace('"""', "'''"),
        runs=len(seeds),
        seeds_text=", ".join(map(str, seeds)),
        first_seed=seeds[0],
        data_text=_data_text(recipe["data"]),
        recipe=json.dumps(recipe, indent=1),
        code=lines,
    )


def _data_text(data: dict) -> str:
    if data["imported"]:
        return (f"the challenge layout: shards in DATA_PATH (default {data['data_path']}), tokenizer at "
                f"TOKENIZER_PATH (default {data['tokenizer_path']}).")
    return (f"a `golf tokenize` folder at TOKENIZE_DIR (default {data['tokenize_dir']}), made by "
            f"`golf tokenize {data['tokenize_args']}`.")
