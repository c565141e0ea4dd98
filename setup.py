"""cffi's build hook has no pyproject.toml key: it is declared here, all else is in
pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
