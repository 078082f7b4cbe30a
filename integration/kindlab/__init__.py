"""A kind-style cluster of docker node containers for pycni's end-to-end tests (see conftest.py)."""
