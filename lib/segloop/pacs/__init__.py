"""Running SegLoop on a PACS: a local Orthanc for the sample data and the tests."""
