"""The one compiled part: the offload engine's native fast path (testbed/offload/_native.c).

Optional: where it cannot be built the engine runs its pure-Python path (native.py).
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("testbed.offload._native", ["testbed/offload/_native.c"],
                             extra_compile_args=["-O2"], optional=True)])
