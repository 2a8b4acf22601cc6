"""Processes that need no torch: the HTTP gateway, the webhook dispatcher and the queue
exporter. They run in the producer image, beside the workers."""
