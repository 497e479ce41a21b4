"""Both executors implement the declared Executor contract (harness.runner.Executor)."""
from harness.ray_executor import RayExecutor
from harness.runner import Executor, InlineExecutor


def test_executors_implement_the_protocol():
    inline = InlineExecutor(threads=1, gpus_per_worker=0.5)
    ray = RayExecutor(2, 1.0, 0.0, resources={"CPU": 2.0}, owns_cluster=False)
    for executor in (inline, ray):
        assert isinstance(executor, Executor)
        assert executor.lost == [] and executor.view_stats == {} and executor.devices == {}
    assert (inline.name, inline.workers, inline.cpus_per_worker, inline.gpus_per_worker, inline.resources) == \
        ("inline", 1, None, 0.5, None)
    assert (ray.name, ray.workers, ray.resources) == ("ray", 2, {"CPU": 2.0})
    inline.close()
    ray.close()  # owns no cluster: nothing to shut down
