"""Our generated store -> the OGBench .npz layout the official QC code loads (--ogbench_dataset_dir), so that
both train on the same recorded rows: observations, actions, terminals (1 on the last row of each episode),
qpos / qvel / button_states for OGBench's relabelling. Also writes <name>-val.npz (the loader needs one; QC's
offline loop only logs its losses there): the store's last 10 episodes."""

import sys
from pathlib import Path

import numpy as np

from offline_chunk.data.store import open_store

store, out = Path(sys.argv[1]), Path(sys.argv[2])
data = open_store(store, extras=True)
terminals = np.zeros(data.num_rows, np.float32)
terminals[data.episode_ends - 1] = 1.0
arrays = {"observations": data.obs, "actions": data.action, "terminals": terminals}
arrays.update({k: np.asarray(v) for k, v in data.extras.items() if k in ("qpos", "qvel", "button_states")})
out.parent.mkdir(parents=True, exist_ok=True)
np.savez(out, **arrays)
val_begin = int(data.episode_ends[-11])
np.savez(str(out).replace(".npz", "-val.npz"), **{k: v[val_begin:] for k, v in arrays.items()})
print(
    out,
    {k: v.shape for k, v in arrays.items()},
    "episodes",
    len(data.episode_ends),
    "ends",
    data.episode_ends[:3],
    "sum reward",
    float(data.reward.sum()),
    "terminals",
    int(data.terminal.sum()),
)
