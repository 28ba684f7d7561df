"""kdp-host: Kubernetes device plugins declared in one YAML file, served from one event loop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdp-host")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
