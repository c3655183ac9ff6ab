"""Rewards: the contract lives in ``base``; each reward is one module registered with ``register_reward``."""

from visalign.rewards.base import (
    Reward,
    RewardError,
    build_reward,
    check_scores,
    register_reward,
    registered_rewards,
)

__all__ = ["Reward", "RewardError", "build_reward", "check_scores", "register_reward", "registered_rewards"]
