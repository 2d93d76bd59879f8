"""Run every ```python block of a README in order, in one namespace, as a reader pasting them would.

Used by .ci/wheel_check.sh from outside the checkout, against the installed wheel. Each block is
timed; a block that raises stops the run with the block's first line and the error.
"""
from __future__ import annotations

import re
import sys
import time
import traceback
from pathlib import Path


def main(readme: str) -> int:
    blocks = re.findall(r"```python\n(.*?)```", Path(readme).read_text(), flags=re.S)
    if not blocks:
        print(f"{readme}: no python blocks", file=sys.stderr)
        return 1
    namespace: dict = {"__name__": "__main__"}
    for i, block in enumerate(blocks, 1):
        start = time.perf_counter()
        try:
            exec(compile(block, f"{readme} block {i}", "exec"), namespace)
        except Exception:
            traceback.print_exc()
            print(f"README python block {i} failed (starts: {block.splitlines()[0]!r})", file=sys.stderr)
            return 1
        print(f"README python block {i} ran in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"{len(blocks)} README python blocks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
