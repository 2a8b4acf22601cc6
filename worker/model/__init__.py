"""Model code: weights resolution and the classifier. Knows nothing of Celery."""
