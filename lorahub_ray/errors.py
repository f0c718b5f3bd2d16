"""Errors and warnings of lorahub-ray. Every error is a `LoraHubRayError` and also the matching built-in."""

from __future__ import annotations


class LoraHubRayError(Exception):
    """Base of every error lorahub-ray raises on purpose; the CLI prints these without a traceback."""


class ConfigError(LoraHubRayError, ValueError):
    """A setting has a value outside what is accepted."""


class InputError(LoraHubRayError, ValueError):
    """A file or directory given as input is missing, malformed or of the wrong kind."""


class ModuleMismatchError(InputError):
    """LoRA modules that cannot be composed together, or with the base model."""


class WorkerError(LoraHubRayError, RuntimeError):
    """The actor pool could not evaluate: workers failed to start, or every candidate failed."""


class BadLossWarning(UserWarning):
    """A candidate's loss was not finite (or its evaluation failed); it was given a penalty score."""


class InefficientSettingsWarning(UserWarning):
    """Settings that work but waste resources, e.g. a population the pool cannot divide evenly."""


class BaseNameWarning(UserWarning):
    """Modules name different base models (``base_model_name_or_path``) although everything that changes the maths
    matches: the same base saved under two paths, or a hub id and a local copy. They are composed anyway."""
