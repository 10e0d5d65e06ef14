"""The LLM-latency section of ``make bench``: systems whose task is a slow, idle AI call.

Each system (plain threads pool, lock per user, solo shard workers, shard hosts) runs on its
own private Redis and takes the same loads (:mod:`bench.llm.loads`); the section is run by
:mod:`bench.llm.section`.
"""
