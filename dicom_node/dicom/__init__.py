"""The node's DICOM side: what speaks DIMSE and what reads and writes DICOM files.

* :mod:`~dicom_node.dicom.scp`: the C-ECHO/C-STORE SCP that receives studies, with the door
  checks of :mod:`~dicom_node.dicom.image_check`, the per-peer limits of
  :mod:`~dicom_node.dicom.guarded_server` and the DIMSE statuses of
  :mod:`~dicom_node.dicom.dimse`;
* :mod:`~dicom_node.dicom.tls`: TLS for both directions;
* :mod:`~dicom_node.dicom.worklist`: the RIS worklist query (C-FIND SCU) and its matching;
* :mod:`~dicom_node.dicom.scu`: the C-STORE client that sends SRs to the PACS;
* :mod:`~dicom_node.dicom.files`: DICOM file encoding and the raw attribute reader.
"""
