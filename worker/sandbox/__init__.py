"""Decoding in separate, limited processes (worker/sandbox/pool.py says why and how).

Deliberately empty: a decode process imports worker.sandbox.child, and nothing more.
"""
