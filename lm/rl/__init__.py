"""Reinforcement learning pieces the RL stages share: rollouts from the training state
(rollout.py), reward functions (rewards.py), and pure loss math (losses.py)."""
