"""Long jobs on the workload queues: records, checkpoints, cooperative pause and cancel.

The producer side (:mod:`jobs.control`) and the worker side (:mod:`jobs.runner`) share one
Redis record per job (:mod:`jobs.store`); ``tasks.jobs`` wires the runner into Celery. Nothing
here imports ``tasks``.
"""
