"""Student training against a teacher cache: streaming, losses, students, training loop, evaluation."""
