"""Package discovery for the wheel (the rest of the metadata is in pyproject.toml).

Found, not listed: every package under search/ and spaces/ ships, so a new subpackage cannot be
left out. The two data packages live in top-level folders mapped in pyproject.toml's
`package-dir`, so discovery cannot see them; they are named here.
"""

from setuptools import find_packages, setup

DATA_PACKAGES = ["search._builtin.hardware_profiles", "search._builtin.experiments"]

setup(
    packages=[*find_packages(include=["search", "search.*", "spaces", "spaces.*"]), *DATA_PACKAGES]
)
