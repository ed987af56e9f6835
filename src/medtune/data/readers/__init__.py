"""Readers: any supported file layout -> unified records (and `data convert`).

Importing the package registers every format, the multiple-choice ones included."""

from medtune.data.readers import choice, formats  # noqa: F401  (each registers its formats)
