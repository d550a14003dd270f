"""The contract between the teacher service and the trainer: cache spec, cache key, on-disk layout."""
