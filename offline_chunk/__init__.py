"""offline_chunk: offline RL on action chunks (semi-Markov transitions) for robot trajectories."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `offline_chunk.load_agent`, imported on first use so that `import offline_chunk` stays light (PEP 562).
    if name == "load_agent":
        from offline_chunk.checkpoint import load_agent

        return load_agent
    raise AttributeError(f"module 'offline_chunk' has no attribute {name!r}")
