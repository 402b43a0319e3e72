"""Point-to-point operations matched the way NCCL matches them, on gloo (for the multi-process tests).

gloo pairs a send with the receive of the same tag; NCCL ignores tags and pairs the k-th send from
rank p to rank q with the k-th receive at q from p, in the order each rank issued them. Code that
relies on tags (two messages between the same two ranks, told apart by their tag) is right on gloo
and silently wrong on NCCL. `nccl_matching()` makes gloo behave as NCCL does: inside it, every
point-to-point operation posted through torch.distributed.batch_isend_irecv, send or recv gets as
its tag its own sequence number on its (group, direction, peer) channel, whatever tag the caller
gave, so gloo can only pair the operations NCCL would pair.

    with nccl_matching() as seen:          # in each process of the group
        comm.halo(x, lo, hi, ring=True)
    assert seen.operations                  # something went through the wrapper
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d


class IssueOrder:
    """The per-channel sequence numbers: channel (group name, "send" or "recv", peer's global rank) → count."""

    def __init__(self):
        self.count: Counter = Counter()
        self.operations = 0

    def tag(self, group, direction: str, peer: int) -> int:
        """The next sequence number on this channel (what NCCL's in-order matching amounts to)."""
        group = group if group is not None else c10d._get_default_group()
        key = (group.group_name, direction, peer)
        self.count[key] += 1
        self.operations += 1
        return self.count[key]


@contextmanager
def nccl_matching() -> Iterator[IssueOrder]:
    """Within the block, point-to-point operations on any backend pair in issue order per peer, tags ignored."""
    order = IssueOrder()
    batch, send, recv = dist.batch_isend_irecv, dist.send, dist.recv

    def batch_in_order(ops):
        retagged = []
        for op in ops:
            tag = order.tag(op.group, "send" if op.op is c10d.isend else "recv", op.peer)
            retagged.append(dist.P2POp(op.op, op.tensor, group=op.group, tag=tag, group_peer=op.group_peer))
        return batch(retagged)

    def send_in_order(tensor, dst=None, group=None, tag=0, **kw):
        return send(tensor, dst, group=group, tag=order.tag(group, "send", dst), **kw)

    def recv_in_order(tensor, src=None, group=None, tag=0, **kw):
        if src is None:
            raise AssertionError("a receive from any source has no NCCL equivalent")
        return recv(tensor, src, group=group, tag=order.tag(group, "recv", src), **kw)

    dist.batch_isend_irecv, dist.send, dist.recv = batch_in_order, send_in_order, recv_in_order
    try:
        yield order
    finally:
        dist.batch_isend_irecv, dist.send, dist.recv = batch, send, recv
