"""offline_chunk: offline RL on action chunks (semi-Markov transitions) for robot trajectories."""

__version__ = "0.1.0"
