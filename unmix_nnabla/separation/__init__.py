"""Separation: windows and workers (separator), the streamed Wiener filter (wiener), and songs into
stems on disk (songs)."""
