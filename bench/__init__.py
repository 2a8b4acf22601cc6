"""`python -m bench`: the in-process ceiling, the seed loop and the real service, in one run."""

# torch before `worker`: OpenMP keeps its default spin count in this process (worker processes
# shorten it, see worker/__init__.py), so the in-process baselines run as a plain script would.
import torch  # noqa: F401
