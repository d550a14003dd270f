"""The contract between the teacher service and the trainer: cache spec and key, on-disk layout, reader, schemas.

Nothing here imports the rest of robustkd: both sides import this package, never each other.
"""
