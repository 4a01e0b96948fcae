"""Build the gil_kernel extension in place (or into a given directory).

    python examples/gil_kernel/build.py [OUT_DIR]

Needs a C++17 compiler and pybind11 (``pip install pybind11``). A one-file extension does
not need a build system: one compiler call with pybind11's and Python's include paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(out_dir=HERE) -> Path:
    """Compile gil_kernel.cpp into ``out_dir``; return the path of the module."""
    import pybind11

    out = Path(out_dir) / ("gil_kernel" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = [
        os.environ.get("CXX", "c++"),
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fvisibility=hidden",  # pybind11's recommendation for extension modules
        f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}",
        str(HERE / "gil_kernel.cpp"),
        "-o",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else HERE))
