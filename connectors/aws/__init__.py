"""The AWS Lambda deployment: webhook functions that enqueue to SQS FIFO, the queue worker and
the scheduled syncs, all calling the same intake and runner as `elasticity serve`."""
