"""The README's torchrun example runs as written (2 gloo ranks on CPU) and its model learns: its exit status says
so (rank 0 checks the context-parallel attention against attention, every rank that its loss went down)."""
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240


def test_torchrun_example():
    # `torchrun` is torch.distributed.run; --standalone picks a free port for the rendezvous
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "eurokernels.distributed.example", "--steps", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: a timeout kills the ranks too
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the example still ran after {TIMEOUT_S} s:\n{out}") from None
    assert proc.returncode == 0, out
    assert "step 4: loss" in out and "context-parallel attention vs attention: max error" in out, out
