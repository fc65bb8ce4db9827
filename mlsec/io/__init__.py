"""Loading what a user hands over: model files, entry points and data, inspected before use.

Modules: :mod:`~mlsec.io.models` (model files and names), :mod:`~mlsec.io.exported`
(``torch.export`` programs), :mod:`~mlsec.io.archives` and :mod:`~mlsec.io.export_checks`
(archives inspected entry by entry), :mod:`~mlsec.io.modules` (the user's ``module:function``),
:mod:`~mlsec.io.data` and :mod:`~mlsec.io.images` (data sets), :mod:`~mlsec.io.messages` (how
messages name files and the caller's inputs).
"""

from mlsec.io.data import BUNDLED_DATA, DATA_SUFFIXES, load_data
from mlsec.io.exported import ExportedModel
from mlsec.io.images import CLASS_MAP_NOTE, IMAGE_SUFFIXES, image_folder_classes
from mlsec.io.messages import LIBRARY_TERMS, PICKLE_WARNING, Terms
from mlsec.io.models import MODEL_SUFFIXES, load_model
from mlsec.io.modules import load_entry_point

__all__ = [
    "BUNDLED_DATA",
    "CLASS_MAP_NOTE",
    "DATA_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LIBRARY_TERMS",
    "MODEL_SUFFIXES",
    "PICKLE_WARNING",
    "ExportedModel",
    "Terms",
    "image_folder_classes",
    "load_data",
    "load_entry_point",
    "load_model",
]
