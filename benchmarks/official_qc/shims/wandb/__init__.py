"""Import shim: the official QC code logs to Weights & Biases (online, needs an account and the network,
neither of which this machine has); its CSV loggers (eval.csv, offline_agent.csv) are what is read here."""

from types import SimpleNamespace


class Image: ...


class Video: ...


class Histogram: ...


def Settings(**kwargs):
    return kwargs


run = None


def init(project=None, **kwargs):
    global run
    run = SimpleNamespace(project=project, save=lambda *a, **k: None, url="(no wandb)")
    return run


def log(*args, **kwargs):
    pass
