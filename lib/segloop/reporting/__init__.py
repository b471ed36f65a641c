"""Pages people look at rather than read: the campaign report (``segloop report``)."""
