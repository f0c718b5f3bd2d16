"""Worker side of lorahub-ray: base model, module cache, composition and loss. Imports no driver code and no Ray."""

from actors.examples import ExampleSets
from actors.stack import LayerStack, LoraStack
from actors.worker import Outcome, Worker, WorkerSpec

__all__ = ["ExampleSets", "LayerStack", "LoraStack", "Outcome", "Worker", "WorkerSpec"]
