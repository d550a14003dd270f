"""The teacher service: runs the frozen model over a task and its perturbations and writes the teacher cache."""
