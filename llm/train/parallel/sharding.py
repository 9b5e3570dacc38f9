"""Data, fully-sharded and tensor parallelism and activation checkpointing, applied to a plain GPT.

Each function mutates or wraps the model in place and leaves parameter names as GPT has them, so the
full state dict (`full_state_dict`) loads into an unwrapped `GPT`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from llm.errors import UserError
from llm.model.gpt import GPT, mlp_hidden_size


def apply_activation_checkpointing(model: GPT, every: int) -> None:
    """Recompute the activations of blocks 0, k, 2k, ... (k = `every`) in backward instead of storing them.

    The block keeps its module and parameter names (only its `forward` is replaced), so state dicts and
    wrappers applied afterwards see the plain model. Non-reentrant checkpointing: works with FSDP2
    hooks and keeps the dropout masks (the RNG state is replayed).
    """
    if every <= 0:
        return
    for i, block in enumerate(model.blocks):
        if i % every == 0:
            block.forward = functools.partial(checkpoint, type(block).forward, block, use_reentrant=False)


def _qkv_rows_by_rank(t: torch.Tensor, tp: int) -> torch.Tensor:
    """Reorder the fused qkv rows [q; k; v] to [q_0; k_0; v_0; q_1; ...] so that a row shard of size
    3d/tp holds whole heads of q, k and v for one rank (ColwiseParallel cuts dim 0 into equal chunks)."""
    width = t.shape[0] // 3
    return t.reshape(3, tp, width // tp, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _qkv_rows_plain(t: torch.Tensor, tp: int) -> torch.Tensor:
    """Inverse of `_qkv_rows_by_rank`: back to GPT's [q; k; v] layout."""
    width = t.shape[0] // 3
    return t.reshape(tp, 3, width // tp, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def apply_tensor_parallel(model: GPT, mesh: DeviceMesh) -> None:
    """Megatron-style tensor parallelism on every block over the 1-D `mesh`.

    Attention: qkv column-wise (each rank gets heads/tp heads), output projection row-wise; MLP: fc
    column-wise, proj row-wise. Each sublayer then costs one all-reduce forward and one backward.
    Embeddings, norms and the output head stay replicated (plain tensors). With dropout, attention on
    each rank's heads draws masks of its own (`_per_rank_attention_dropout`).
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = mesh.size()
    cfg = model.cfg
    if cfg.attention_heads % tp or mlp_hidden_size(cfg) % tp:
        raise UserError(
            f"train.tensor_parallel {tp} must divide model.attention_heads ({cfg.attention_heads}) and the MLP "
            f"width ({mlp_hidden_size(cfg)})"
        )
    plan = {
        "attn.qkv": ColwiseParallel(),
        "attn.proj": RowwiseParallel(),
        "mlp.fc": ColwiseParallel(),
        "mlp.proj": RowwiseParallel(),
    }
    for block in model.blocks:
        with torch.no_grad():
            for p in block.attn.qkv.parameters():
                p.copy_(_qkv_rows_by_rank(p, tp))
        parallelize_module(block, mesh, plan)
        if cfg.dropout > 0:
            _per_rank_attention_dropout(block.attn, mesh.get_local_rank())


def _generator(device: torch.device) -> torch.Generator:
    """The default generator that random ops on `device` draw from."""
    if device.type != "cuda":
        return torch.default_generator
    return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]


def _per_rank_attention_dropout(attn: nn.Module, tp_rank: int) -> None:
    """Let attention dropout on this rank's heads draw from a random stream of the rank's own.

    Every rank of a tensor-parallel group is seeded alike, so that dropout on replicated activations
    (embeddings, the outputs of the row-wise projections) keeps them identical. Between the qkv and
    output projections, though, each rank holds different heads: the shared stream would drop the
    same positions in every rank's heads, masks that one unsplit model would never draw. So, from the
    qkv output to the output projection's input, the generator of the activations' device runs from a
    seed drawn from the shared (CPU) stream plus the rank, and its own state is put back afterwards.
    The draw advances the shared stream alike on every rank, and activation checkpointing, which
    replays that stream, recomputes the same masks.
    """
    saved: list[torch.Tensor] = []

    def enter(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not attn.training:
            return
        seed = int(torch.randint(2**62, (1,)))
        generator = _generator(output.device)
        saved.append(generator.get_state())
        generator.manual_seed(seed + tp_rank)

    def leave(module: nn.Module, args: tuple) -> None:
        if saved:
            _generator(args[0].device).set_state(saved.pop())

    attn.qkv.register_forward_hook(enter)
    attn.proj.register_forward_pre_hook(leave)


def apply_fsdp(model: GPT, mesh: DeviceMesh) -> None:
    """FSDP2: shard every block, then the root (embeddings, final norm, head), over the 1-D `mesh`.

    Per-block units let the all-gather of block i+1 overlap block i's compute and bound the memory of
    unsharded weights to about one block.
    """
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state_dict(module: nn.Module | dict[str, torch.Tensor], tp: int = 1) -> dict[str, torch.Tensor]:
    """The module's state dict (or a state dict of its layout) with every DTensor gathered and fused
    qkv rows back in GPT's layout.

    A collective under FSDP/TP: call it on every rank. Tensors are detached CPU copies.
    """
    out: dict[str, torch.Tensor] = {}
    state = module if isinstance(module, dict) else module.state_dict()
    for name, value in state.items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        value = value.detach().to("cpu", copy=True)
        if tp > 1 and ".attn.qkv." in name:
            value = _qkv_rows_plain(value, tp)
        out[name] = value
    return out
