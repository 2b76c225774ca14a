"""setup.py -- what pyproject.toml cannot say about the wbroker wheel.

The wheel is a platform wheel although the package is pure Python: it
carries libwbroker.so inside the package directory (wbroker/libwbroker.so),
built by `make wheel-lib` with msgpack-c, PCRE2 and jansson linked in, so
that it needs nothing but glibc.  The library comes from, in this order:

  $WBROKER_WHEEL_LIB            a path to such a library;
  wbroker/libwbroker.so         already next to the modules (`make wheel`
                                stages it there in a copy of this folder);
  ../../build/wheel/...         `make wheel-lib` run in the checkout this
                                folder belongs to (so that `pip install
                                client/python` works from a checkout).

ctypes needs no particular Python or ABI, so the tag is py3-none-PLATFORM.
PLATFORM is manylinux_2_X_ARCH (PEP 600: runs on any distribution with
glibc 2.X or later) when the library needs no library beyond glibc's own;
the build fails otherwise rather than claim a compatibility the wheel
lacks.  2.X is the oldest of the glibc versions that auditwheel has a
manylinux policy for (the versions of the reference distributions) that
provides every GLIBC_ symbol version the library uses: the tag that
`auditwheel show` gives the wheel.
"""
import os
import platform
import re
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 has its own
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = "libwbroker.so"
# What a manylinux wheel may need from the system (PEP 600 / auditwheel's
# policy): glibc's own libraries.
GLIBC_LIBS = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2",
              "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
# The glibc versions of auditwheel's manylinux policies (manylinux2014 =
# manylinux_2_17 and later); past the last, the library's own version.
MANYLINUX_GLIBC = [(2, 17), (2, 24), (2, 26), (2, 27), (2, 28), (2, 31),
                   (2, 34), (2, 35), (2, 36), (2, 37), (2, 38), (2, 39),
                   (2, 40), (2, 41)]


def library():
    """Path of the libwbroker.so the wheel carries."""
    path = os.environ.get("WBROKER_WHEEL_LIB")
    if path:
        return path
    staged = os.path.join(HERE, "wbroker", LIB)
    if os.path.isfile(staged):
        return staged
    top = os.path.dirname(os.path.dirname(HERE))
    if os.path.isfile(os.path.join(top, "include", "wbroker.h")):
        subprocess.check_call(["make", "-C", top, "--no-print-directory",
                               "wheel-lib"])
        return os.path.join(top, "build", "wheel", LIB)
    raise SystemExit("setup.py: no %s: build the wheel with `make wheel` "
                     "at the top of the wbroker checkout" % LIB)


def readelf(args, path):
    return subprocess.run(["readelf", "-W"] + args + [path], check=True,
                          capture_output=True, text=True).stdout


def platform_tag(path):
    """manylinux_2_X_ARCH for the library at path (see the docstring)."""
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]",
                            readelf(["-d"], path)))
    extra = needed - GLIBC_LIBS
    if extra:
        raise SystemExit("setup.py: %s needs %s besides glibc: not a "
                         "manylinux library" % (path, ", ".join(sorted(extra))))
    versions = [(int(a), int(b)) for a, b in
                re.findall(r"Name: GLIBC_(\d+)\.(\d+)", readelf(["-V"], path))]
    needs = max(versions + [(2, 17)])
    glibc = next((v for v in MANYLINUX_GLIBC if v >= needs), needs)
    return "manylinux_%d_%d_%s" % (glibc[0], glibc[1], platform.machine())


class BuildPy(build_py):
    """Copies the library into the package, next to its modules."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "wbroker", LIB)
        src = library()
        if os.path.abspath(src) != os.path.abspath(dest):
            shutil.copyfile(src, dest)
            os.chmod(dest, 0o755)
        self.wbroker_lib = dest


class BinaryDistribution(Distribution):
    """Has a platform part: installed to platlib, the wheel not pure."""

    def has_ext_modules(self):
        return True


class BdistWheel(bdist_wheel):
    """A platform wheel for any Python 3: py3-none-manylinux_2_X_ARCH."""

    def get_tag(self):
        build = self.get_finalized_command("build_py")
        path = getattr(build, "wbroker_lib", None) or library()
        return "py3", "none", platform_tag(path)


setup(distclass=BinaryDistribution,
      cmdclass={"build_py": BuildPy, "bdist_wheel": BdistWheel})
