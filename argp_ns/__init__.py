"""argp_ns: ARGP and SafeguardGS pruning for nerfstudio's splatfacto.

Importing the package (nerfstudio does, through the ``nerfstudio.method_configs`` entry point, before
any ns-* tool loads a checkpoint) makes nerfstudio 1.1.5 usable with current torch and offline:
see :mod:`argp_ns.compat`.
"""

from argp_ns.compat import install

install()

__version__ = "0.1.0"
