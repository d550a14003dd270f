"""robustkd: fine-tune foundation models against a cached frozen teacher.

`robustkd.load(folder)` opens a run folder or an exported student for prediction. Importing robustkd registers
the exported classifier's classes with transformers' Auto classes as soon as transformers is imported (before or
after robustkd), without importing transformers or torch itself: `robustkd --help` stays fast.
"""

from __future__ import annotations

import wrapt


@wrapt.when_imported("transformers")
def _register_classes(_transformers: object) -> None:
    from robustkd.hf_classifier import register

    register()


def load(path: str):  # noqa: ANN201 - a robustkd.predictor.Predictor
    """A run folder (`robustkd train`) or an exported folder (`robustkd export`) as a `Predictor`:
    `.predict(texts)` -> labels, `.predict_proba(texts)` -> [n, classes] probabilities."""
    from robustkd.predictor import Predictor

    return Predictor.load(path)
