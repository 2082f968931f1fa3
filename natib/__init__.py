"""natib: Katib-compatible hyperparameter tuning built as asyncio actors over NATS JetStream.

Trial code reports metrics with ``natib.report_metrics({"accuracy": 0.93}, step=epoch)`` when its
experiment uses the Push metrics collector.
"""

from natib.runtime.push import NotInATrial, report_metrics

__version__ = "0.1.0"

__all__ = ["NotInATrial", "__version__", "report_metrics"]
