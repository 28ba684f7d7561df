"""kdp-host: Kubernetes device plugins declared in one YAML file, served from one event loop."""

# The one place the version lives: pyproject.toml reads it (dynamic), and `make version V=x.y.z`
# rewrites it together with its copies (chart version and appVersion, the Dockerfile's VERSION
# default), which tests/test_version.py checks.
__version__ = "0.1.0"
