"""Run an artifact with this runtime bundle: ``python3 run.py ARTIFACT [--input x.npy] [-o out.npz]``
(the options of ``compiler run``). Copied into a bundle as ``run.py`` by ``compiler bundle``."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from backends.tvm.runtime import bundle_problem  # noqa: E402

problem = bundle_problem()
if problem is not None:
    print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)

from compiler.driver.tool import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
