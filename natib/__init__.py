"""natib: Katib-compatible hyperparameter tuning built as asyncio actors over NATS JetStream."""

__version__ = "0.1.0"
