"""Distributed training with eurokernels (README, "Distributed"). The functions live with the ops
(``eurokernels.context_parallel_attention``, ``eurokernels.vocab_parallel_cross_entropy``, ...) and the DTensor
sharding rules in ``eurokernels.dtensor``; this package holds the runnable example:

    torchrun --standalone --nproc_per_node 2 -m eurokernels.distributed.example
"""
