"""The bench's threads-pool tasks, producer side: their names, their queue, how workers load
them. The tasks themselves are in :mod:`bench.llm.task` (only the bench's workers import it).
"""

#: (a) sleep ``AI_LATENCY_MS``, then append the reply: no order of any kind.
REPLY = "shardline.bench.llm.reply"
#: (b) the same under a Redis lock per user; a task that finds the lock taken retries.
LOCKED_REPLY = "shardline.bench.llm.locked_reply"
#: The one queue both threads-pool systems consume.
QUEUE = "bench.llm"
#: The worker command-line option that loads the tasks.
INCLUDE = ("--include", "bench.llm.task")
