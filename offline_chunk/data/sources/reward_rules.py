"""What the reward is when a source records none (diffusion_policy's and most LeRobot demonstrations): the
user says so with `reward=`, since an offline-RL run on invented zero rewards learns nothing and says
nothing.

    reward=zeros           every reward 0: for behaviour cloning only (Q is then 0 everywhere)
    reward=success_at_end  every recorded episode taken to end in success (human demonstrations): reward 1
                           on each episode's last row and 0 before it, that row terminal (the goal is
                           absorbing, and a truncated last row's reward would never enter a chunk target)
"""

from __future__ import annotations

import numpy as np

from offline_chunk.errors import DataError

REWARD_RULES = {
    "zeros": "reward=zeros: every reward 0 (behaviour cloning only)",
    "success_at_end": "reward=success_at_end: 1 on each episode's last row (terminal), else 0",
}


def rule_rewards(path, rule: str, rows: int, episode_ends: np.ndarray, missing: str):
    """(reward, terminal or None, reward_source) by the rule `reward=` names, for a source that lacks the
    reward array `missing`; an absent or unknown rule is refused, naming the rules."""
    if rule not in REWARD_RULES:
        choices = ", ".join(f"reward={name}" for name in REWARD_RULES)
        said = f"reward={rule!r} is not a rule; " if rule else ""
        raise DataError(path, f"has no reward array; {said}say what the reward is with ?{choices}", missing)
    reward = np.zeros(rows, np.float32)
    if rule == "zeros":
        return reward, None, REWARD_RULES[rule]
    last_rows = np.zeros(rows, bool)
    last_rows[np.asarray(episode_ends) - 1] = True
    reward[last_rows] = 1.0
    return reward, last_rows, REWARD_RULES[rule]
