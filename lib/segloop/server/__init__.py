"""Server glue: the datastore, request checks and SegLoop's extra routes on MONAI Label's app."""
