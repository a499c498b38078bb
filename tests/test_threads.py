"""Thread safety: every op called from 4 Python threads at once gives bitwise the results of serial calls.

Training frameworks call ops from several threads (data-loader workers computing losses, pipeline stages, async
evaluation). The cpu backend runs OpenMP regions from each calling thread; `use_backend` is per thread
(eurokernels/_backend.py), so a block in one thread must not change what another thread runs. What stays
process-global is listed in the README ("Threads").
"""
import threading

import pytest
import torch

import eurokernels as ek

THREADS = 4
ROUNDS = 3  # each thread runs its workload this many times, interleaved with the others


def _grads(fn, *inputs):
    """fn's outputs and the gradients of their weighted sum (fixed weights) for every float input."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = sum((o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
    total.backward()
    return [o.detach() for o in outs] + [t.grad for t in leaves if t.grad is not None]


def _workloads():
    """op family -> a function of no arguments running that op forward and backward on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    rand = lambda *shape, dtype=torch.bfloat16: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    x, w, res = rand(64, 1000), rand(1000), rand(64, 1000)
    q, k = rand(2, 48, 8, 64), rand(2, 48, 2, 64)
    cos, sin = ek.rotary_cos_sin(64, 64)
    logits, labels = rand(96, 5000), torch.randint(0, 5000, (96,), generator=g)
    labels[::7] = -100
    hidden, weight = rand(96, 64), rand(5000, 64) * 0.1
    gate, up = rand(64, 700), rand(64, 700)
    qa, ka, va = rand(120, 4, 64), rand(120, 2, 64), rand(120, 2, 64)
    cu = torch.tensor([0, 50, 51, 120], dtype=torch.int32)
    return {
        "rms_norm": lambda: _grads(lambda a, b, c: ek.rms_norm(a, b, residual=c), x, w, res),
        "rotary": lambda: _grads(lambda a, b: ek.apply_rotary(a, b, cos, sin), q, k),
        "softmax": lambda: _grads(lambda a: (ek.softmax(a), ek.log_softmax(a)), logits),
        "cross_entropy": lambda: _grads(lambda a: ek.cross_entropy(a, labels, z_loss=1e-4, reduction="none"),
                                        logits),
        "linear_cross_entropy": lambda: _grads(lambda h, wt: ek.linear_cross_entropy(h, wt, labels), hidden,
                                               weight),
        "swiglu": lambda: _grads(ek.swiglu, gate, up),
        "attention": lambda: _grads(lambda a, b, c: ek.attention(
            a, b, c, causal=True, window_size=(30, 0), cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=69,
            max_seqlen_k=69), qa, ka, va),
    }


def _run_threads(jobs):
    """Runs jobs (callables) in threads released together by a barrier; returns their results or re-raises."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def work(i):
        try:
            barrier.wait(timeout=60)
            results[i] = jobs[i]()
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread did not finish in 300 s (deadlock?)"
    if errors:
        raise errors[0]
    return results


def _bits(t):
    return t.reshape(-1).view(torch.uint8) if t.dtype.is_floating_point else t


def _bitwise_equal(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(_bits(x), _bits(y)) for x, y in zip(a, b))


@pytest.mark.parametrize("op", sorted(_workloads()))
def test_concurrent_calls_equal_serial(op):
    """4 threads run the op on the cpu backend at once, ROUNDS times each: every result bitwise the serial one."""
    workload = _workloads()[op]
    with ek.use_backend("cpu"):
        serial = workload()

    def job():
        with ek.use_backend("cpu"):
            return [workload() for _ in range(ROUNDS)]

    for rounds in _run_threads([job] * THREADS):
        for got in rounds:
            assert _bitwise_equal(got, serial), f"{op}: a concurrent call differs from the serial one"


def test_use_backend_is_per_thread():
    """Threads inside different use_backend blocks at the same time each get their own backend's results bitwise
    (reference and cpu round differently, so a leak from one thread to another shows), and a thread started inside
    a block does not inherit it."""
    workloads = _workloads()
    ops = ("rms_norm", "cross_entropy", "attention")
    serial = {}
    for backend in ("reference", "cpu"):
        with ek.use_backend(backend):
            serial[backend] = {op: workloads[op]() for op in ops}
    assert any(not _bitwise_equal(serial["reference"][op], serial["cpu"][op]) for op in ops), (
        "the two backends agree bitwise on every op: this test could not see a leak")

    def job(backend):
        def run():
            out = []
            with ek.use_backend(backend):
                for _ in range(ROUNDS):
                    out.append({op: workloads[op]() for op in ops})
                    assert ek.default_backend("cpu") == backend
            return out
        return run

    backends = ["reference", "cpu"] * (THREADS // 2)
    for backend, rounds in zip(backends, _run_threads([job(b) for b in backends])):
        for got in rounds:
            for op in ops:
                assert _bitwise_equal(got[op], serial[backend][op]), f"{op} under use_backend({backend!r}) differs"

    with ek.use_backend("reference"):
        seen = _run_threads([lambda: ek.default_backend("cpu")])
    assert seen == ["cpu"], "a thread started inside a use_backend block inherited it"
