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


def test_chunk_queues_deal_ranges_serve_retries_first_and_steal_the_longest_tail():
    from harness.ray_executor import ChunkQueues

    work = ChunkQueues.split([["a1", "b1"], ["a2", "b2"], ["a3", "b3"], ["a4", "b4"], ["a5", "b5"]], 2)
    alive = [True, True]
    assert [list(q) for q in work.queues] == [[["a1", "b1"], ["a2", "b2"], ["a3", "b3"]], [["a4", "b4"], ["a5", "b5"]]]
    assert work.next_units(1, alive) == ["a4", "b4"]  # a group comes whole
    work.retries.append("a1-retry")
    assert work.next_units(1, alive) == ["a1-retry"]  # requeued units first, on any actor
    assert work.next_units(1, alive) == ["a5", "b5"]
    assert work.next_units(1, alive) == ["a3", "b3"]  # idle: steals the tail of the longest range
    assert work.next_units(0, alive) == ["a1", "b1"]  # the donor keeps its head
    assert work.next_units(1, alive) == []  # a one-group range is left to its live owner
    assert work.next_units(1, [False, True]) == ["a2", "b2"]  # ... unless the owner is dead
    assert not work
