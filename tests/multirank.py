"""Running a check on several gloo ranks from a test: spawned processes, a deadline, verdict files, no teardown.

    def _check(rank, world, *args): ...          # module level (spawn pickles it by name); asserts
    run_ranks(_check, world, *args)              # in the test: fails with every failing rank's traceback

Every rank runs ``check(rank, world, *args)`` inside an initialized gloo process group (the default group, through a
file:// rendezvous in a fresh temporary folder: no port to pick), with one intra-op thread (up to 4 ranks share CI's
2 cores; oversubscribed OpenMP pools only slow gloo down). A rank that raises writes its traceback; the test fails
with them. A rank still running at the deadline is killed and the test fails: a hung collective cannot hang CI.

Why the ranks leave through os._exit without tearing gloo down: gloo's teardown (destroy_process_group, or the C++
destructors at interpreter exit) aborted a rank once in CI with "terminate called without an active exception" after
every check had passed -- a race inside torch/gloo, not in our ops. So all ranks finish their collectives (barrier),
meet once more through the file system (no gloo traffic left in flight), write their verdict and exit without running
destructors. A failing check still fails the test: the verdict file carries the traceback.
"""
import os
import tempfile
import time
import traceback

TIMEOUT_S = 300


def _worker(rank, world, tmp, check, args):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    verdict = "ok"
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
        check(rank, world, *args)
        dist.barrier()
    except BaseException:  # noqa: B036 -- every failure must reach the verdict file
        verdict = traceback.format_exc()
    with open(f"{tmp}/verdict.{rank}", "w") as f:
        f.write(verdict)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(os.path.exists(f"{tmp}/verdict.{r}") for r in range(world)):
        time.sleep(0.01)
    os._exit(0 if verdict == "ok" else 1)


def run_ranks(check, world, *args, timeout_s=TIMEOUT_S):
    """Run ``check(rank, world, *args)`` on ``world`` spawned gloo ranks; assert that every rank passed."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_worker, args=(r, world, tmp, check, args)) for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        verdicts = {}
        for r in range(world):
            path = f"{tmp}/verdict.{r}"
            verdicts[r] = open(path).read() if os.path.exists(path) else f"no verdict (exit code {procs[r].exitcode})"
    assert not hung, f"ranks {hung} still running after {timeout_s} s; verdicts: {verdicts}"
    failed = {r: v for r, v in verdicts.items() if v != "ok"}
    assert not failed, "\n".join(f"rank {r}:\n{v}" for r, v in failed.items())
    # Every rank wrote "ok" and then left through os._exit(0): an exit code other than 0 is a crash after the checks.
    assert [p.exitcode for p in procs] == [0] * world
