"""``python -m dicom_node``: the ``dicom_node`` command."""

from dicom_node.cli import main

main()
