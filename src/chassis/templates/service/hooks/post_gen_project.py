"""Remove bytecode caches from the generated project.

An installer may compile the template's plain-Python files where the package is
installed; their ``__pycache__`` folders would otherwise be copied into every project.
"""

import shutil
from pathlib import Path

for cache in sorted(Path.cwd().rglob("__pycache__"), reverse=True):
    shutil.rmtree(cache, ignore_errors=True)
