"""The webhook dispatcher: `python -m services.webhooks` (docs/lifecycle.md)."""
