"""The machinery every chunk agent shares (`ChunkAgent`): building the actor, the critic ensemble and its
targets, their optimizers and learning-rate schedules; normalising a batch (and encoding its frames); a
clipped gradient step; compilation and autocast of the losses; acting, Q queries and checkpoint state.

What an agent learns is in its own file (dql.py, cpql.py, qc.py, chunk_sac.py, td3bc.py): its critic loss
with the target's next-state value (`critic_objective`, `next_state_value`), its actor loss
(`actor_objective`), its target and EMA updates (`update_targets`) and how it picks a chunk to act
(`choose_chunk`). `update` below is the order they run in, the same for every agent:

    critic step on critic_objective  ->  actor step on actor_objective  ->  update_targets, LR schedules

Everything in `update` stays on the device: no `.item()`, no branching on tensor values; metrics come back
as 0-d tensors for the training loop to read at its log interval.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from einops import rearrange
from pydantic import Field
from torch import nn

from offline_chunk.compute import CompiledWithFallback, autocast_context, compile_enabled
from offline_chunk.data.normalize import Normalizer
from offline_chunk.distributed import SINGLE, average_gradients
from offline_chunk.nets.critic import ChunkCriticEnsemble, CriticConfig
from offline_chunk.nets.vision import ImageEncoder, TrunkedCritic, TrunkedPolicy, VisionConfig
from offline_chunk.policies import make_policy
from offline_chunk.sections import Section


def adam(params, lr: float) -> torch.optim.Adam:
    """Fused Adam: one kernel over all parameters, its step count kept on the device (the foreach and
    per-parameter versions read the step count on the host at every step)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


LrSchedule = Literal["constant", "cosine", "linear", "constant_with_warmup"]  # diffusers' get_scheduler
WhichActor = Literal["online", "ema"]  # the online actor or its EMA copy


class AgentConfig(Section):
    """What every chunk agent's configuration holds; each agent's file adds its own (`Config`), with the
    published defaults."""

    name: str
    critic: CriticConfig = CriticConfig()
    backup: Literal["min", "mean"] = "min"
    """the critic target's value of the next state (targets.py)"""
    target_lower_bound: Literal["none"] = "none"
    lr: float = Field(3.0e-4, gt=0)
    """Adam, the actor (and the critics unless `critic_lr` is set)"""
    critic_lr: float | None = Field(None, gt=0)
    """Adam, the critics and the camera encoders they train (None: `lr`)"""
    lr_schedule: LrSchedule = "constant"
    """over the run's updates (`steps`); fine-tuning online runs at the constant base rates"""
    lr_warmup: int = Field(0, ge=0)
    """warm-up updates for the schedule"""
    grad_norm: float = Field(float("inf"), gt=0)
    """gradient clipping norm (.inf: no clipping; the norm is still logged)"""
    tau: float = Field(0.005, gt=0, le=1)
    """critic target: Polyak rate"""
    vision: VisionConfig = VisionConfig()
    """camera encoders, when the store has cameras"""


class TargetSchedule(Section):
    """When the Polyak critic targets move: every `target_every` updates from update `target_start`."""

    target_every: int = Field(1, ge=1)
    """updates between target moves"""
    target_start: int = Field(0, ge=0)
    """the first update that moves them"""


class SingleChunkActConfig(Section):
    """Acting with an actor that gives one chunk per state (no choice among candidates)."""

    actor: Literal["online"] = "online"
    candidates: Literal[1] = 1


@dataclass(frozen=True)
class Dims:
    """The data's shapes: low-dimensional observation width D, history To, action width A, chunk length H,
    and each camera's frame shape (H, W, C) in the store's order."""

    obs_dim: int
    obs_horizon: int
    action_dim: int
    horizon: int
    image_shapes: dict[str, list[int]] = field(default_factory=dict)

    def networks(self, feature_dim: int) -> dict[str, int]:
        """The shapes the actor and critics are built for: observation rows of D low-dimensional values and
        `feature_dim` camera features."""
        return {
            "obs_dim": self.obs_dim + feature_dim,
            "obs_horizon": self.obs_horizon,
            "action_dim": self.action_dim,
            "horizon": self.horizon,
        }


class ChunkAgent(nn.Module):
    """A chunk actor (`cfg.policy`) with an ensemble of chunk critics and their Polyak targets.

    Each agent names its `Config` and states `critic_objective`, `actor_objective`, `update_targets` and
    `choose_chunk`. `cfg` is that Config, or a dict of its fields (validated)."""

    Config: type[AgentConfig] = AgentConfig
    acts_by_candidates = False  # acting samples `act.candidates` chunks and picks one by Q
    optimizers = ("actor_opt", "critic_opt")  # the optimizer attributes a checkpoint saves
    deterministic_actor = False  # acting gives the same chunk for a state every time
    group = SINGLE  # the processes of a data-parallel run that average their gradients (train.py sets it)

    def __init__(self, dims: Dims, cfg: AgentConfig | dict, normalizer: Normalizer, total_steps: int):
        super().__init__()
        self.dims, self.cfg = dims, self.Config.model_validate(cfg)
        cfg = self.cfg
        self.normalizer = normalizer
        self.encoder = ImageEncoder(dims.image_shapes, cfg.vision) if dims.image_shapes else None
        shapes = dims.networks(self.encoder.feature_dim if self.encoder is not None else 0)
        self.actor = self.own_trunks(make_policy(cfg.policy, **shapes), TrunkedPolicy)
        critic_cfg = cfg.critic.model_dump()
        critic = ChunkCriticEnsemble(
            shapes["obs_dim"],
            dims.obs_horizon,
            dims.action_dim,
            size=critic_cfg.pop("ensemble"),
            horizon=self.critic_view(torch.empty(0, dims.horizon, 0)).shape[-2],  # of the chunks it scores
            **critic_cfg,
        )
        self.critic = self.own_trunks(critic, TrunkedCritic)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        critic_lr = cfg.lr if cfg.critic_lr is None else cfg.critic_lr
        self.actor_opt = adam(self.actor.parameters(), cfg.lr)
        self.critic_opt = adam(self.critic.parameters(), critic_lr)
        self.scheduled = [self.actor_opt, self.critic_opt]  # the optimizers whose rates follow the schedule
        if self.encoder is not None:  # DrQ-v2's encoder_opt, stepped with the critics' (ImageEncoder)
            self.encoder_opt = adam(self.encoder.parameters(), critic_lr)
            self.optimizers = (*type(self).optimizers, "encoder_opt")
            self.scheduled.append(self.encoder_opt)
        self.schedulers = [
            get_scheduler(
                cfg.lr_schedule, opt, num_warmup_steps=cfg.lr_warmup, num_training_steps=total_steps
            )
            for opt in self.scheduled
        ]
        self.num_updates = 0
        self.autocast = autocast_context(torch.device("cpu"), "fp32")  # a no-op until `configure_compute`
        self.compiles = False  # whether `compiled` compiles the losses (`configure_compute`)
        self.compiled_losses: dict[str, CompiledWithFallback] = {}

    def own_trunks(self, net: nn.Module, wrapper: type[TrunkedPolicy | TrunkedCritic]) -> nn.Module:
        """`net` behind camera trunks of its own where the encoder leaves them to each network (`drq`:
        DrQ-v2's actor and critic trunks, nets/vision.py), else `net` itself. Copies of the actor and the
        critics (EMA and target networks) then copy their trunks with them."""
        trunks = None if self.encoder is None else self.encoder.trunks(self.dims.obs_dim)
        return net if trunks is None else wrapper(net, trunks)

    def configure_compute(self, compile: str | bool = "auto", precision: str = "fp32") -> ChunkAgent:
        """Compile the losses (`compiled`) and/or autocast the network passes in them (`self.autocast`, which
        each agent's losses enter) on the device the agent is on now (compute.py); what an update computes
        is unchanged up to floating-point rounding."""
        device = next(self.parameters()).device
        self.autocast = autocast_context(device, precision)
        self.compiles, self.compiled_losses = compile_enabled(compile, device), {}
        return self

    def compiled(self, loss):
        """The loss function to call: `loss` itself, or, where `configure_compute` asked for compilation, its
        torch.compile'd version (one per loss, made at its first call; eager again if compiling fails)."""
        if not self.compiles:
            return loss
        name = loss.__name__
        if name not in self.compiled_losses:
            self.compiled_losses[name] = CompiledWithFallback(loss)
        return self.compiled_losses[name]

    # ------------------------------------------------------------------ the update

    def update(self, batch: dict) -> dict[str, torch.Tensor]:
        """One gradient step of critic and actor on a batch in environment units, then the target updates.
        Its three phases are separate methods so that `make bench` can time each."""
        obs, actions, next_obs = self.normalized(batch)
        metrics = self.update_critic(obs, actions, next_obs, batch)
        metrics.update(self.update_actor(obs, actions, batch["action_mask"]))
        self.finish_update()
        return metrics

    def normalized(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Observations, action chunks and next observations of a batch in the networks' units. With
        cameras, each observation row is followed by its frames' encoder features (`drq`: the conv features
        that the actor's and the critics' own trunks read) from augmented frames (drawn apart for s and s'),
        with gradient for s only (ImageEncoder); `update_actor` reads them detached."""
        obs = self.normalizer.obs(batch["observations"])
        next_obs = self.normalizer.obs(batch["next_observations"])
        if self.encoder is not None:
            obs = torch.cat([obs, self.encoder(batch["images"], train=True)], dim=-1)
            with torch.no_grad():
                next_obs = torch.cat([next_obs, self.encoder(batch["next_images"], train=True)], dim=-1)
        return obs, self.normalizer.action(batch["actions"]), next_obs

    def finish_update(self) -> None:
        """Count the update, move the targets on their schedules, step the learning-rate schedules."""
        self.num_updates += 1
        self.update_targets()
        for scheduler in self.schedulers:
            scheduler.step()

    def hold_base_rates(self) -> None:
        """Every optimizer at its base rate (`lr`, `critic_lr`) from now on, whatever schedule and step it
        was at: the online phase (harness/finetune.py) runs for its own number of updates, at a constant
        rate as Q-chunking's online loop does, while the offline schedule's length was the offline run's."""
        self.schedulers = [get_scheduler("constant", opt) for opt in self.scheduled]

    def learning_rates(self) -> dict[str, float]:
        return {
            "lr/actor": self.schedulers[0].get_last_lr()[0],
            "lr/critic": self.schedulers[1].get_last_lr()[0],
        }

    def critic_view(self, chunk: torch.Tensor) -> torch.Tensor:
        """The part of a (..., H, A) chunk the critics score: all of it (an agent may score a prefix)."""
        return chunk

    def update_critic(self, obs, actions, next_obs, batch) -> dict[str, torch.Tensor]:
        """The critic step on the agent's `critic_objective` (compiled where asked), which also trains the
        camera encoder."""
        loss, metrics = self.compiled(self.critic_objective)(obs, actions, next_obs, batch)
        encoder = None if self.encoder is None else (self.encoder_opt, self.encoder)  # trained by this loss
        return {**metrics, "critic/grad_norm": self._step(self.critic_opt, self.critic, loss, also=encoder)}

    def update_actor(self, obs, actions, action_mask) -> dict[str, torch.Tensor]:
        """The actor step on the agent's `actor_objective` (compiled where asked). It reads the observation
        rows detached: the camera encoder is the critic's to train (ImageEncoder, DrQ-v2's routing); the
        actor's own trunks (`drq`) are trained here."""
        loss, terms = self.compiled(self.actor_objective)(obs.detach(), actions, action_mask)
        grad_norm = self._step(self.actor_opt, self.actor, loss)
        return {"actor/loss": loss.detach(), "actor/grad_norm": grad_norm, **terms}

    def critic_objective(self, obs, actions, next_obs, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critics' loss (float32) and its metrics, from normalized (obs, actions, next_obs) and the
        batch's rewards, discounts and dones: each agent's file states it."""
        raise NotImplementedError

    def actor_objective(self, obs, actions, action_mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The actor's loss (float32) and its metrics: each agent's file states it."""
        raise NotImplementedError

    def _step(self, optimizer, module: nn.Module, loss: torch.Tensor, also=None) -> torch.Tensor:
        """A gradient step of `module` on `loss`, clipped to `grad_norm` (and of the (optimizer, module)
        `also` that the same loss trains, clipped together with it)."""
        optimizers, params = [optimizer], list(module.parameters())
        if also is not None:
            optimizers.append(also[0])
            params += list(also[1].parameters())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self.share_gradients(params)
        grad_norm = nn.utils.clip_grad_norm_(params, self.cfg.grad_norm, foreach=True)
        for opt in optimizers:
            opt.step()
        return grad_norm.detach()

    def share_gradients(self, params: list[torch.Tensor]) -> None:
        """Data-parallel runs (distributed.py): the gradients averaged over the processes before a step."""
        if self.group.parallel:
            average_gradients(params, self.group)

    def update_targets(self) -> None:
        """The target networks' moves after update `num_updates` (counted on the host): each agent's file
        states them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ using a trained agent

    def _as_tensor(self, array) -> torch.Tensor:
        """A float32 tensor on the agent's device, from a tensor or a numpy array (what a notebook holds)."""
        return torch.as_tensor(array, dtype=torch.float32, device=next(self.parameters()).device)

    def network_obs(self, observations: torch.Tensor, images=None) -> torch.Tensor:
        """(B, To, D) observations and frames {camera: (B, To, H, W, C) uint8} in environment units -> the
        networks' observation rows (normalized, then the cameras' encoder features without augmentation;
        with `drq` the actor and the critics each apply their own trunks to them)."""
        if observations.dim() != 3 or observations.shape[1:] != (self.dims.obs_horizon, self.dims.obs_dim):
            raise ValueError(
                f"observations: expected (B, To, D) with To = {self.dims.obs_horizon}, "
                f"D = {self.dims.obs_dim}, got {tuple(observations.shape)}"
            )
        obs = self.normalizer.obs(observations)
        if self.encoder is None:
            return obs
        missing = [camera for camera in self.encoder.cameras if camera not in (images or {})]
        if missing:
            raise ValueError(f"this agent reads cameras {self.encoder.cameras}: images= lacks {missing}")
        frames = {}
        for camera in self.encoder.cameras:
            camera_frames = torch.as_tensor(images[camera], device=obs.device)
            if camera_frames.dtype != torch.uint8 or camera_frames.shape[:2] != obs.shape[:2]:
                raise ValueError(
                    f"images[{camera!r}]: expected uint8 frames (B, To, H, W, C) with (B, To) = "
                    f"{tuple(obs.shape[:2])}, got {camera_frames.dtype} {tuple(camera_frames.shape)}"
                )
            frames[camera] = rearrange(camera_frames, "b t h w c -> b t c h w")
        return torch.cat([obs, self.encoder(frames)], dim=-1)

    @torch.no_grad()
    def q_value(self, observations, actions, reduce: str = "min", images=None):
        """Q(s_t, a_t..a_{t+H-1}) in environment units: observations (B, To, D), actions (B, H, A), tensors
        or numpy arrays; the result is of the same kind. A camera agent also takes `images`
        {camera: (B, To, H, W, C) uint8}.

        reduce: 'min' (B,) the pessimistic value the agent backs up, 'mean' (B,), or 'none' (K, B) one
        value per critic. The online critics are used; critics that score a prefix of the chunk
        (`critic_view`, e.g. chunk_sac with critic_input=first_action) give the value of that prefix."""
        obs, chunks = self._as_tensor(observations), self._as_tensor(actions)
        q = self.critic(self.network_obs(obs, images), self.critic_view(self.normalizer.action(chunks)))
        q = {"min": lambda: q.min(dim=0).values, "mean": lambda: q.mean(dim=0), "none": lambda: q}[reduce]()
        return q.cpu().numpy() if isinstance(observations, np.ndarray) else q

    @torch.no_grad()
    def act(self, observation_history, explore: float | None = None, images=None):
        """Action chunk(s) in environment units: (To, D) -> (H, A), or a batch (B, To, D) -> (B, H, A); a
        tensor or a numpy array in, the same kind out. A camera agent also takes `images`, each camera's
        frames (To, H, W, C) or (B, To, H, W, C) uint8. `explore` (collecting experience online): a chunk
        of `explore_chunk` with that noise scale instead of the one the agent would execute."""
        history = self._as_tensor(observation_history)
        single = history.dim() == 2
        if single:
            history = history[None]
            images = {camera: torch.as_tensor(frames)[None] for camera, frames in (images or {}).items()}
        obs = self.network_obs(history, images)
        chunk = self.choose_chunk(obs) if explore is None else self.explore_chunk(obs, explore)
        chunk = self.normalizer.unnormalize_action(chunk.clamp(-1, 1))
        chunk = chunk[0] if single else chunk
        return chunk.cpu().numpy() if isinstance(observation_history, np.ndarray) else chunk

    def choose_chunk(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, To, D) normalized observations -> (B, H, A) normalized chunks to execute."""
        raise NotImplementedError

    def explore_chunk(self, obs: torch.Tensor, noise: float) -> torch.Tensor:
        """The chunk to execute while collecting: a stochastic actor's own choice (the diffusion agents
        sample their candidates); a deterministic one's (`deterministic_actor`) with N(0, noise²) added in
        normalized units, TD3's exploration (Fujimoto et al. 2018: 0.1)."""
        chunk = self.choose_chunk(obs)
        return chunk + noise * torch.randn_like(chunk) if self.deterministic_actor else chunk

    # ------------------------------------------------------------------ checkpoint state

    def training_state(self) -> dict:
        """Everything beyond the module weights that resuming needs."""
        return {
            **{name: getattr(self, name).state_dict() for name in self.optimizers},
            "schedulers": [s.state_dict() for s in self.schedulers],
            "num_updates": self.num_updates,
        }

    def load_training_state(self, state: dict) -> None:
        for name in self.optimizers:
            getattr(self, name).load_state_dict(state[name])
        for scheduler, scheduler_state in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(scheduler_state)
        self.num_updates = int(state["num_updates"])
