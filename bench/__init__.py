"""`python -m bench`: the in-process ceiling, the seed loop and the real service, in one run."""

# torch before `worker`: OpenMP keeps its default (spinning) wait policy in this process, the
# faster one for a lone loop, so the in-process baselines run at their best. Worker processes
# import `worker` first, which makes their idle OpenMP threads sleep (worker/__init__.py).
import torch  # noqa: F401
