"""Job queues: the one enqueue path (it wakes idle workers) and the worker loop that takes jobs."""
