"""Build the unixloop Python package.

The extension unixloop._core is compiled from python/unixloop/_core*.c plus
the libunixloop sources listed in src/SOURCES (the same list CMake reads).
Build without network access:  pip install --no-build-isolation .
"""
import glob
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)  # setuptools wants source paths relative to the project root


def library_sources():
    sources = []
    with open(os.path.join("src", "SOURCES"), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                sources.append(os.path.join("src", line))
    if not sources:
        raise SystemExit("src/SOURCES lists no source files")
    return sources


binding_sources = sorted(glob.glob(os.path.join("python", "unixloop", "_core*.c")))
if not binding_sources:
    raise SystemExit("no python/unixloop/_core*.c: the binding sources are missing")
headers = sorted(
    glob.glob(os.path.join("include", "*.h"))
    + glob.glob(os.path.join("src", "*.h"))
    + glob.glob(os.path.join("python", "unixloop", "*.h"))
)

core = Extension(
    "unixloop._core",
    sources=binding_sources + library_sources(),
    include_dirs=["include", "src"],
    depends=headers + [os.path.join("src", "SOURCES")],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra",
                        "-Werror=implicit-function-declaration"],
    libraries=["pthread", "m"],
)

# Keep setuptools' build products out of CMake's build/ directory and out of
# the python/ source tree.
os.makedirs("build-py", exist_ok=True)

setup(
    name="unixloop",
    version="0.1.0",
    description="asyncio's Unix event loop in C",
    package_dir={"": "python"},
    packages=["unixloop"],
    ext_modules=[core],
    python_requires=">=3.8",
    options={
        "build": {"build_base": "build-py"},
        "egg_info": {"egg_base": "build-py"},
    },
)
