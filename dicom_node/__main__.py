"""``python -m dicom_node``: the ``dicom_node`` command."""

from .cli import main

main()
