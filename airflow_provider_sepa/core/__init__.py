"""Transport-free core shared by the sync hook and the async trigger.

It contains the job record and its state rules, the retry policy and request decisions,
connection settings and URL building, payload parsing, the exception classes, the
decoder of compressed downloads and the writer that puts a download's bytes into its
staged file. It imports no HTTP client, so
both transports apply exactly the same rules.
"""
