"""How shardline's processes start: embedded Redis, shard workers, Procfile, supervisor."""
