"""Text shaping for training data: report text written from labels (phantoms, instruct
data) and the order of report sentences. Reading reports is :mod:`report_language`."""
