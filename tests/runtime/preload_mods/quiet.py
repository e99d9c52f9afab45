"""A module with no side effects: a job server preloads it once a job has imported it."""

VALUE = 1
