"""tether: RLHF for language models, from collecting human feedback to PPO and DPO."""

__version__ = "0.1.0"
