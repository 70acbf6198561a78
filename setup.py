# Exists only for cffi_modules: everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder", "native/build_alertparse.py:ffibuilder"])
