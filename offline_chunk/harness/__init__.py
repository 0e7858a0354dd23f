"""The harness: tools built on the library (offline_chunk.data, nets, policies, agents, config, train,
checkpoint): the simulators and the evaluation engine, the benchmark against the Q-chunking paper, the
update-speed benchmark, Q along recorded demonstrations, and the command line. Imports point one way: the
harness imports the library, never the reverse."""
