"""Operator tools over the log and the projection: replay and verify, audit and stats,
redrive, the topic schemas. Not the pipeline: nothing here runs inside a worker."""
