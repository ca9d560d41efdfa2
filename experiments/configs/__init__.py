"""Hydra configuration tree of bridgelab (root: config.yaml). A package so Hydra finds it as pkg://experiments.configs."""
