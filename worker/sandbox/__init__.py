"""Decoding in separate, limited processes (worker/sandbox/pool.py says why and how)."""

from worker.sandbox.pool import DecodePool, Limits, default_limits

__all__ = ["DecodePool", "Limits", "default_limits"]
