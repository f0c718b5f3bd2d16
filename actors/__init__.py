"""Worker side of lorahub-ray: base model, module cache, composition and loss. Imports no driver code and no Ray."""

from actors.examples import ExampleSets
from actors.stack import LayerStack, LoraStack
from actors.worker import CandidateLoss, Worker, WorkerSpec

__all__ = ["CandidateLoss", "ExampleSets", "LayerStack", "LoraStack", "Worker", "WorkerSpec"]
