"""Task families for fine-tuning, one module each; adding a task is adding one module here.

Each family reads its files, encodes examples for the model, decodes the model's outputs into
answers and scores them (see ``base.Task``).
"""

from __future__ import annotations

import inspect

from .base import DataError, Task
from .classification import Classification, PairClassification, Regression
from .multilabel import MultiLabel
from .multiple_choice import MultipleChoice
from .qa import QuestionAnswering
from .tagging import TokenClassification

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (Classification, PairClassification, Regression, MultiLabel,
                 TokenClassification, QuestionAnswering, MultipleChoice)
}


def build_task(name: str, **options) -> Task:
    """The task family ``name`` with the options it accepts; options set to None are defaults."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.")
    task_class = TASKS[name]
    accepted = inspect.signature(task_class.__init__).parameters
    return task_class(**{k: v for k, v in options.items() if k in accepted and v is not None})


__all__ = ["TASKS", "DataError", "Task", "build_task"]
