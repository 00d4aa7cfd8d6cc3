"""Populations: a sweep's runs that differ only in init arm and seed, trained as one batched model
in one process (``hydra/launcher=population``). Each member stays a run of its own."""
