"""DICOM objects SegLoop writes and reads (DICOM SEG)."""
