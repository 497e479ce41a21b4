"""Test-session environment: offline, Ray on 127.0.0.1, caches in a temp folder."""
import os
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="sofs-bench-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("SOFS_BENCH_CACHE", str(_TMP / "cache"))

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = REPO_ROOT.parent / "shared" / "real-data"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip in a process without a CUDA device."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none in this process)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster per test session (ray.init costs seconds)."""
    from harness.ray_executor import connect

    resources = connect(None, num_cpus=2)
    yield resources
    import ray

    ray.shutdown()


def random_weights(arch: str, path: Path) -> Path:
    """Seed-0 random-init weights of a ``harness.features`` architecture, saved to ``path``."""
    import torch

    from harness.features import build_model

    torch.manual_seed(0)
    torch.save(build_model(arch).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def lite0_file(tmp_path_factory):
    """Random-init EfficientNet-Lite0 weights in timm names (the architecture, not Google's weights)."""
    return random_weights("efficientnet_lite0", tmp_path_factory.mktemp("weights") / "lite0_random.pt")
