"""Reinforcement learning from the live policy (issue 16): rollouts, rewards, GRPO, PPO."""
