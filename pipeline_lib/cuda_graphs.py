"""CUDA-graph replay of a fixed-grid training step.

On a GPU the small vector fields of these flows (a 2×128 MLP on a batch of 1024) leave the GPU
idle between kernel launches: a training iteration of rk4 with 16 evaluations issues a few
thousand small kernels, and their launch cost, not arithmetic, sets the time. A CUDA graph
records the kernels of one forward + backward pass once and replays them with one launch
(``torch.cuda.CUDAGraph``; PyTorch's "whole-network capture" recipe).

What can be captured: a solve whose control flow does not depend on the data, i.e. ``rk4``
without the adjoint and with a fixed end time (:func:`~pipeline_lib.flows.cnf.rk4_fixed_grid`
takes its number of steps from the host). Adaptive solvers (dopri5) decide their steps from
error estimates read back to the host at every step, so they cannot be captured; they, and
any capture that fails, run eagerly. The optimizer step, gradient masking and clipping stay
eager (a few dozen kernels per iteration).

The replayed graph overwrites the parameters' ``.grad`` tensors in place, so eager batches
beside it (the last, smaller batch of an epoch) must zero the gradients in place
(``zero_grad(set_to_none=False)``) rather than drop them. Hutchinson noise is drawn inside the
graph from the CUDA generator (a fresh draw at every replay).
"""

from __future__ import annotations

import logging

import torch

from pipeline_lib.flows import ContinuousFlow

__all__ = ["GraphedTrainingStep", "graph_unsupported_reason"]

log = logging.getLogger("sparseflows.cuda_graphs")


def graph_unsupported_reason(model: ContinuousFlow, device: torch.device) -> str | None:
    """Why a training step of ``model`` cannot be captured on ``device``; None if it can."""
    if device.type != "cuda":
        return "not on a CUDA device"
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return f"a {type(model).__name__}, not a flow (graphs are captured for flows only)"
    for block in blocks:
        solver = block.solver
        if solver.method != "rk4" or solver.adjoint:
            how = f"{solver.method}{' with adjoint' if solver.adjoint else ''}"
            return f"solver {how} (only rk4 without adjoint has a fixed kernel sequence)"
        if block.sqrt_end_time.requires_grad:
            return "trainable end time (the number of rk4 steps would change)"
    return None


class GraphedTrainingStep:
    """``loss_fn(model, batch)`` and its backward pass, captured for batches of one shape.

    ``step(batch)`` copies the batch into the graph's input, replays the graph and returns the
    outputs of ``loss_fn`` (tensors owned by the graph, overwritten by the next replay) after
    which the parameters' ``.grad`` hold the batch's gradient.

    Arguments:
        model: the flow being trained (parameters must stay the same tensors: optimizers
            update them in place).
        loss_fn: ``loss_fn(model, batch) -> (loss, *extras)``; ``loss`` is backpropagated.
        example: a batch of the shape and dtype to capture (its values are not used).
        warmup: eager forward + backward passes on a side stream before the capture
            (initializes cuBLAS workspaces and autograd state; the weights are not changed).
    """

    def __init__(self, model: ContinuousFlow, loss_fn, example: torch.Tensor, warmup: int = 3):
        self.batch_shape = tuple(example.shape)
        self.static_batch = torch.zeros_like(example)
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                model.zero_grad(set_to_none=True)
                loss_fn(model, self.static_batch)[0].backward()
        torch.cuda.current_stream(example.device).wait_stream(stream)
        model.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = loss_fn(model, self.static_batch)
            self.outputs[0].backward()
        # The memory the replay writes the gradients to.
        self.grads = [(p, p.grad) for p in model.parameters() if p.grad is not None]

    def step(self, batch: torch.Tensor):
        self.static_batch.copy_(batch)
        self.graph.replay()
        for p, grad in self.grads:  # re-attach, should eager code have replaced a .grad
            if p.grad is not grad:
                p.grad = grad
        return self.outputs

    @classmethod
    def maybe(cls, model: ContinuousFlow, loss_fn, example: torch.Tensor, tag: str = ""):
        """A captured step, or None (with the reason logged) where capture does not apply or
        fails: training then runs eagerly."""
        reason = graph_unsupported_reason(model, example.device)
        if reason is None:
            try:
                graphed = cls(model, loss_fn, example)
                log.info("%sCUDA graph captured for batches of %s", tag, list(example.shape))
                return graphed
            except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager
                model.zero_grad(set_to_none=True)
                reason = f"capture failed ({type(err).__name__}: {err})"
        if example.device.type == "cuda":
            log.info("%straining without a CUDA graph: %s", tag, reason)
        return None
