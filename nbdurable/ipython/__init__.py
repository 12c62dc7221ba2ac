"""The IPython adapter: magics, transformers, output capture and replay display."""

from nbdurable.ipython.extension import load, runtime_of, unload

__all__ = ["load", "unload", "runtime_of"]
