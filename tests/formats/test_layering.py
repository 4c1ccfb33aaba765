"""formats is the bottom layer: it must import and work with torch impossible to import."""

import ast
import subprocess
import sys
from pathlib import Path

FORMATS_DIR = Path(__file__).resolve().parents[2] / "formats"
ALLOWED_TOP_LEVEL = {"numpy", "bitarray", "formats", "__future__"} | set(sys.stdlib_module_names)

BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
import numpy as np
import formats, pkgutil, importlib
for mod in pkgutil.iter_modules(formats.__path__):
    importlib.import_module("formats." + mod.name)
data = formats.pack([formats.LayerMasks("fc", (3,), [np.array([1, 0, 1], bool)])], [0])
assert formats.unpack(data).layers[0].masks[0].tolist() == [True, False, True]
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok")
"""


def test_formats_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH], cwd=FORMATS_DIR.parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_formats_imports_only_numpy_bitarray_stdlib():
    for path in sorted(FORMATS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in ALLOWED_TOP_LEVEL, f"{path.name} imports {name}"
