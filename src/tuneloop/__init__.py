"""tuneloop: the fine-tuning loop for transformer text classifiers.

Importing the package does nothing but define names: no folders are created, no models or data
are loaded and no logging is configured (CONVENTIONS.md, rule 6).
"""

__version__ = "0.1.0"
