"""`python -m bench`: the in-process ceiling, the seed loop and the real service, in one run."""
