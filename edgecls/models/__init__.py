"""Backbone registry, classifier construction and model statistics.

Importing this package does not import TensorFlow; `create_model` does.
"""

from edgecls.models.registry import create_model, list_models, register_model
from edgecls.models.specs import SPECS, BackboneSpec, get_spec

__all__ = ["SPECS", "BackboneSpec", "create_model", "get_spec", "list_models", "register_model"]
