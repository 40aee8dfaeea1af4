"""Standard-library backports: ``tomllib`` arrived in Python 3.11 (``tomli`` before)."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
