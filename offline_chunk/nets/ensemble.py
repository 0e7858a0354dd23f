"""K independently initialised copies of a module, evaluated in one vectorized call.

The members' parameters are stacked along a leading K axis (`torch.func.stack_module_state`) and held by
`Ensemble.stacked`, a tree of empty container modules that mirrors the member's own module tree. A
member parameter `encoder.net.0.weight` of shape S is therefore the Ensemble parameter
`stacked.encoder.net.0.weight` of shape (K, *S): state_dict keys read like the member's, optimizers,
`.to()`, deepcopy and `clip_grad_norm_` see ordinary parameters, and member k's weights are the slice [k].

`forward` runs one member-shaped module (kept on the 'meta' device, so it holds no data and is not a
registered submodule) through `torch.func.functional_call` under `torch.vmap` over the stacked
parameters; every member sees the same inputs and the outputs gain a leading K axis. `train()`/`eval()`
reach the base module, and random operations (dropout) draw independently for each member.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state


def _container_at(root: nn.Module, path: list[str]) -> nn.Module:
    """The container module at `path` under `root`, created (empty) where missing."""
    module = root
    for name in path:
        if name not in module._modules:
            module.add_module(name, nn.Module())
        module = module._modules[name]
    return module


class Ensemble(nn.Module):
    """`size` members, one per call of `factory`; forward(*inputs) -> member outputs stacked on axis 0."""

    def __init__(self, factory: Callable[[], nn.Module], size: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"an ensemble needs at least one member, got size={size}")
        members = [factory() for _ in range(size)]
        if list(members[0].buffers()):
            # Buffers (BatchNorm running statistics) are updated in place, which vmap cannot do per member.
            raise ValueError(f"ensemble members must not have buffers: {type(members[0]).__name__} has some")
        stacked_params, _ = stack_module_state(members)
        self.stacked = nn.Module()
        for name, tensor in stacked_params.items():
            *path, leaf = name.split(".")
            _container_at(self.stacked, path).register_parameter(leaf, nn.Parameter(tensor))
        # Written to __dict__ so nn.Module does not register it: the data lives in `stacked` only.
        self.__dict__["_base"] = copy.deepcopy(members[0]).to("meta")
        self.size = size

    def train(self, mode: bool = True) -> Ensemble:
        # The base module is not a submodule, so its training flag has to follow by hand.
        self._base.train(mode)
        return super().train(mode)

    def forward(self, *inputs: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """detach_params: gradients reach the inputs only (an actor's Q term: the critic's own weight
        gradients would be computed for nothing)."""

        def call_member(member_params: dict[str, torch.Tensor], *member_inputs: torch.Tensor) -> torch.Tensor:
            return functional_call(self._base, member_params, member_inputs)

        in_dims = (0, *[None] * len(inputs))  # parameters batched over K, inputs shared by all members
        # randomness="different": random ops inside a member (dropout) draw independently per member.
        vmapped = torch.vmap(call_member, in_dims=in_dims, randomness="different")
        params = {name: p.detach() if detach_params else p for name, p in self.stacked.named_parameters()}
        return vmapped(params, *inputs)
