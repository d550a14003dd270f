"""The trainer: streams a teacher cache and fine-tunes students without the teacher in memory.

It imports `robustkd.shared` only, except `online` (the teacher in memory, for `online-kd`).
"""
