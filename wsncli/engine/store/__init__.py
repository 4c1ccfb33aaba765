"""Files on disk: the checkpoint format, its schema, safe atomic writes and the writer's lock."""
