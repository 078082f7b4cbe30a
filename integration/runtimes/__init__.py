"""Real container runtimes drive pycni (a package only so its conftest does not shadow tests/conftest.py)."""
