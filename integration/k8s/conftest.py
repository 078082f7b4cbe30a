"""integration/k8s tests: marker `k8sbuild` (the Kubernetes/kind build; see test_k8s_build.py)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "k8sbuild: builds and checks Kubernetes, its images and the kind node image "
                                       "(integration/k8s/build.sh); needs root, slow when the cache is cold")
