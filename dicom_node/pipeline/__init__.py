"""One study's way through the node, in order.

:mod:`~dicom_node.pipeline.assembly` turns complete studies into jobs (routing, and the one
rule for which images the model sees, :mod:`~dicom_node.pipeline.local_study`);
:mod:`~dicom_node.pipeline.drafting` runs the model and writes the draft SR;
:mod:`~dicom_node.pipeline.finding_codes` codes a version's findings;
:mod:`~dicom_node.pipeline.reports` keeps every SR version and puts it in the outbox; and
:mod:`~dicom_node.pipeline.delivery` sends the outbox to the PACS. Running work (a job, an
SR being sent) shows it is alive with :mod:`~dicom_node.pipeline.heartbeat`.
"""
