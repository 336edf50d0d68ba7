"""Helpers shared by the test packages and the benchmarks: real DICOM peers."""
