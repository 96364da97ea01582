"""gristmill: base-model completions to reviewed SFT data. The code lives in gristmill.app/models/db."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gristmill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
