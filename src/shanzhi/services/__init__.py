"""Use cases behind the API: add a cloud, create a VDC, apply or delete an app.

Each function takes a session inside the caller's transaction, checks its input, writes,
and flushes; it never commits (the API route owns the transaction).
"""
